"""Speed and memory of normtut's layers next to torch's fused kernels (`make bench`).

normtut trades speed for readability: it builds each layer from elementwise ops and
reductions instead of one fused kernel. These targets keep that trade bounded:

- time: forward + backward at most TIME_TARGET times torch's (median of repeats);
- memory: tensors autograd saves for backward at most MEMORY_TARGET times the input.

Exits 1 if a target is missed. Timings vary between machines; the memory figure does not.
"""

from __future__ import annotations

import sys

import torch
from torch.utils import benchmark

import normtut

TIME_TARGET = 8.0  # x torch's time for forward + backward
MEMORY_TARGET = 6.0  # x input bytes saved for backward

SHAPE = (32, 64, 16, 16)  # [N, C, H, W]
CASES = {
    "BatchNorm2d": (lambda m: m.BatchNorm2d(64), SHAPE),
    "InstanceNorm2d": (lambda m: m.InstanceNorm2d(64, affine=True), SHAPE),
    "GroupNorm(8)": (lambda m: m.GroupNorm(8, 64), SHAPE),
    "LayerNorm(C,H,W)": (lambda m: m.LayerNorm(list(SHAPE[1:])), SHAPE),
    "LayerNorm(D) on (N,L,D)": (lambda m: m.LayerNorm(512), (32, 128, 512)),
}


def step_time(layer: torch.nn.Module, x: torch.Tensor) -> float:
    """Median seconds of one forward + backward."""

    def step() -> None:
        layer(x).sum().backward()

    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=1)
    return timer.blocked_autorange(min_run_time=0.5).median


def saved_bytes(layer: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum()
    return sum(seen.values())


def main() -> int:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    ok = True
    print(f"{'layer':26s} {'torch ms':>9s} {'normtut ms':>11s} {'ratio':>6s} {'saved/input':>12s}")
    for name, (make, shape) in CASES.items():
        x = torch.randn(shape, requires_grad=True)
        t_torch = step_time(make(torch.nn), x)
        t_ours = step_time(make(normtut), x)
        mem = saved_bytes(make(normtut), x) / (x.numel() * x.element_size())
        ratio = t_ours / t_torch
        flag = "" if ratio <= TIME_TARGET and mem <= MEMORY_TARGET else "  <-- target missed"
        ok &= not flag
        print(
            f"{name:26s} {t_torch * 1e3:9.2f} {t_ours * 1e3:11.2f} {ratio:6.1f} {mem:12.1f}{flag}"
        )
    verdict = "met" if ok else "MISSED"
    print(f"targets: time ratio <= {TIME_TARGET}, saved/input <= {MEMORY_TARGET}: {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
