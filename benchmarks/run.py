"""Speed and memory of normtut's layers next to torch's C++ kernels (``make bench``).

How it measures, so that the numbers mean something on a shared machine:

- one thread, and CPU time of that thread (``time.thread_time``): other processes on the
  machine do not count;
- forward (``layer(x)`` with autograd recording) and forward + backward
  (``torch.autograd.grad`` of the output with a dense random ``dy`` with respect to the input
  and the parameters: a ``.sum()`` would hand torch's kernel an expanded gradient);
- the candidates (torch, normtut, the ``x.clone()`` floor, normtut under ``torch.compile``)
  run interleaved, one after the other in every round; a candidate's number is the median
  over rounds of its time divided by torch's time in the same round;
- memory: the bytes autograd keeps for backward (distinct storages) and the peak of the
  storages created during forward + backward and alive at once (not counting the input, dy
  and the parameters, even where a view of them is made), both as multiples of the input's
  bytes.

Targets: the median forward + backward ratio over the shapes of each layer (``Case.target``).
Exits 1 when one is missed, or when normtut keeps more for backward than torch does.
The compiled column (normtut under ``torch.compile``, inductor; it needs a C++ compiler) is
reported against ``Case.compiled_aim`` without gating. Writes ``benchmarks/bench.csv``,
which the backward-pass chapter renders.

    python benchmarks/run.py [--rounds N] [--quick] [--no-compile] [--only TEXT] [--csv PATH]
"""

from __future__ import annotations

import argparse
import csv
import platform
import shutil
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import normtut
from normtut.experiments.backward import saved_bytes  # what autograd keeps, in bytes

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    layer: str  # the name in the results table
    make: Callable  # make(library, shape) -> module; library is torch.nn or normtut
    shapes: tuple[tuple[int, ...], ...]
    train: bool = True
    target: float = 2.0  # median forward + backward ratio to torch over the shapes
    compiled_aim: float | None = None


CASES = (
    Case(
        "BatchNorm2d train",
        lambda L, s: L.BatchNorm2d(s[1]),
        ((16, 64, 32, 32), (64, 256, 8, 8), (8, 32, 64, 64)),
        target=2.0,
        compiled_aim=1.2,
    ),
    Case(
        "BatchNorm2d eval",
        lambda L, s: L.BatchNorm2d(s[1]),
        ((16, 64, 32, 32), (64, 256, 8, 8), (8, 32, 64, 64)),
        train=False,
        target=2.0,
    ),
    Case(
        "BatchNorm1d (N, C)",
        lambda L, s: L.BatchNorm1d(s[1]),
        ((1024, 1024), (4096, 256), (256, 4096)),
        target=3.0,
    ),
    Case(
        "InstanceNorm2d",
        lambda L, s: L.InstanceNorm2d(s[1], affine=True),
        ((16, 64, 32, 32), (64, 256, 8, 8), (8, 32, 64, 64)),
        target=2.0,
        compiled_aim=1.2,
    ),
    Case(
        "GroupNorm(32)",
        lambda L, s: L.GroupNorm(32, s[1]),
        ((16, 64, 32, 32), (64, 256, 8, 8), (8, 128, 32, 32)),
        target=3.5,
    ),
    Case(
        "LayerNorm (C, H, W)",
        lambda L, s: L.LayerNorm(list(s[1:])),
        ((16, 64, 32, 32), (64, 256, 8, 8), (8, 32, 64, 64)),
        target=2.5,
        compiled_aim=1.2,
    ),
    Case(
        "LayerNorm last dim",
        lambda L, s: L.LayerNorm(s[-1]),
        ((32, 128, 256), (16, 128, 512), (8, 128, 1024)),
        target=4.5,
    ),
)

FIELDS = [
    "layer", "shape", "target", "torch_fwd_ms", "torch_fwdbwd_ms", "normtut_fwd", "normtut_fwdbwd",
    "floor_fwd", "floor_fwdbwd", "compiled_fwd", "compiled_fwdbwd", "saved_torch", "saved_normtut",
    "peak_torch", "peak_normtut",
]  # fmt: skip


def inputs_of(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """What the backward differentiates: the input and the parameters."""
    return [x, *layer.parameters()]


def step_fns(layer: Callable, params: list[torch.Tensor], x: torch.Tensor, dy: torch.Tensor):
    """(forward, forward + backward) of one candidate, as callables without arguments."""

    def forward() -> None:
        layer(x)

    def forward_backward() -> None:
        torch.autograd.grad(layer(x), [x, *params], dy)

    return forward, forward_backward


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, reps: int) -> dict[str, float]:
    """Median over rounds of each candidate's CPU time divided by torch's in that round.

    Every round runs every candidate ``reps`` times, in an order that rotates between rounds.
    ``"torch"``'s own entry is its median time per call, in seconds.
    """
    names = list(fns)
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        times = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.thread_time()
            for _ in range(reps):
                fns[name]()
            times[name] = (time.thread_time() - start) / reps
        for name in names:
            ratios[name].append(times[name] if name == "torch" else times[name] / times["torch"])
    return {name: statistics.median(v) for name, v in ratios.items()}


class PeakMemory(TorchDispatchMode):
    """The peak bytes of tensor storages created by the ops run inside, while they are alive.

    Storages of the tensors in ``existing`` (the input, dy, the parameters) are never
    counted, even when an op inside returns a view of them (GroupNorm reshapes its input).
    """

    def __init__(self, existing: Sequence[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.existing = {t.untyped_storage().data_ptr() for t in existing}
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key = storage.data_ptr()
        if key in self.seen or key in self.existing or storage.nbytes() == 0:
            return
        self.seen.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, storage.nbytes())

    def _free(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes


def peak_bytes(fn: Callable[[], None], existing: Sequence[torch.Tensor] = ()) -> int:
    """The peak bytes of the storages ``fn`` creates, not counting those of ``existing``."""
    with PeakMemory(existing) as tracker:
        fn()
    return tracker.peak


def compile_available() -> str | None:
    """None if torch.compile (inductor) can run here, else the reason it cannot."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        return "no C++ compiler (g++) on this machine: inductor cannot build CPU kernels"
    return None


def measure(case: Case, shape: tuple[int, ...], rounds: int, use_compile: bool) -> dict:
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    dy = torch.randn(shape)
    ref, ours = case.make(nn, shape).train(case.train), case.make(normtut, shape).train(case.train)
    candidates = {
        "torch": step_fns(ref, list(ref.parameters()), x, dy),
        "normtut": step_fns(ours, list(ours.parameters()), x, dy),
        "floor": step_fns(torch.clone, [], x, dy),
    }
    if use_compile:
        torch._dynamo.reset()  # a fresh compile per shape: no recompile limit, no dynamic shapes
        compiled = torch.compile(case.make(normtut, shape).train(case.train), dynamic=False)
        candidates["compiled"] = step_fns(compiled, list(compiled.parameters()), x, dy)
    for fwd, fwdbwd in candidates.values():  # warm up: page faults, caches, compilation
        for _ in range(3):
            fwd()
            fwdbwd()
    start = time.thread_time()
    candidates["torch"][1]()
    reps = max(1, int(0.005 / max(time.thread_time() - start, 1e-6)))  # ~5 ms per measurement
    fwd = interleaved({k: v[0] for k, v in candidates.items()}, rounds, 2 * reps)
    fwdbwd = interleaved({k: v[1] for k, v in candidates.items()}, rounds, reps)
    nbytes = x.numel() * x.element_size()

    def graph(layer):
        return lambda: layer(x)

    row = {
        "layer": case.layer,
        "shape": "x".join(map(str, shape)),
        "target": case.target,
        "torch_fwd_ms": fwd["torch"] * 1e3,
        "torch_fwdbwd_ms": fwdbwd["torch"] * 1e3,
        "saved_torch": saved_bytes(graph(ref)) / nbytes,
        "saved_normtut": saved_bytes(graph(ours)) / nbytes,
        "peak_torch": peak_bytes(candidates["torch"][1], [dy, *inputs_of(ref, x)]) / nbytes,
        "peak_normtut": peak_bytes(candidates["normtut"][1], [dy, *inputs_of(ours, x)]) / nbytes,
    }
    for name in ("normtut", "floor", "compiled"):
        row[f"{name}_fwd"] = fwd.get(name, float("nan"))
        row[f"{name}_fwdbwd"] = fwdbwd.get(name, float("nan"))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="the first shape of each layer only")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled column")
    parser.add_argument("--csv", type=Path, default=HERE / "bench.csv")
    parser.add_argument("--only", help="run only the layers whose name contains this text")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rounds = args.rounds
    why_not = "--no-compile given" if args.no_compile else compile_available()
    print(f"torch {torch.__version__}, {platform.machine()}, one thread, CPU time, {rounds} rounds")
    if why_not:
        print(f"compiled column skipped: {why_not}")

    rows, ok = [], True
    header = (
        f"{'layer':20s} {'shape':15s} {'torch ms':>9s} {'fwd':>5s} {'fwd+bwd':>7s} "
        f"{'floor':>5s} {'compiled':>8s} {'saved':>11s} {'peak':>11s}"
    )
    print(header + "\n" + "-" * len(header))
    for case in CASES:
        if args.only and args.only not in case.layer:
            continue
        shapes = case.shapes[:1] if args.quick else case.shapes
        case_rows = [measure(case, s, rounds, why_not is None) for s in shapes]
        for r in case_rows:
            print(
                f"{r['layer']:20s} {r['shape']:15s} {r['torch_fwdbwd_ms']:9.2f} "
                f"{r['normtut_fwd']:5.2f} {r['normtut_fwdbwd']:7.2f} {r['floor_fwdbwd']:5.2f} "
                f"{r['compiled_fwdbwd']:8.2f} {r['saved_normtut']:4.1f} / {r['saved_torch']:4.1f} "
                f"{r['peak_normtut']:4.1f} / {r['peak_torch']:4.1f}"
            )
        rows += case_rows
        median = statistics.median(r["normtut_fwdbwd"] for r in case_rows)
        saved_ok = all(r["saved_normtut"] <= r["saved_torch"] for r in case_rows)
        verdict = "ok" if median <= case.target and saved_ok else "MISSED"
        ok &= verdict == "ok"
        line = f"  -> median fwd+bwd {median:.2f} (target <= {case.target}): {verdict}"
        if case.compiled_aim is not None and why_not is None:
            compiled = statistics.median(r["compiled_fwdbwd"] for r in case_rows)
            line += f"; compiled {compiled:.2f} (aim <= {case.compiled_aim})"
        print(line)

    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"wrote {args.csv}")
    print("every target met" if ok else "a target was MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
