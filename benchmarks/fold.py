"""Eval-time saving of folding BatchNorm into the layer before it (`make bench`).

Two small networks, each timed three ways on the same input under ``torch.inference_mode()``:
with torch's BatchNorm layers, with normtut's, and folded by ``normtut.fold_batchnorm``.
One thread, CPU time (``time.thread_time``), the candidates interleaved in rounds (in a
rotating order); the result is the median over rounds of each candidate's time and of its
ratio to the torch-BatchNorm network in the same round.

Writes ``benchmarks/fold_results.csv``, which chapter 12 renders. Exits 1 if folding does
not make a network faster than the same network with torch's BatchNorm.
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import normtut
from normtut.experiments.models import LeNet

TARGET = 1.0  # folded time / torch-BatchNorm time must be below this
ROUNDS = 25
ROUND_CPU_SECONDS = 0.05  # CPU time of one candidate's timing in a round
CSV_PATH = Path(__file__).with_name("fold_results.csv")


def vgg_style(bn2d: Callable[[int], nn.Module], bn1d: Callable[[int], nn.Module]) -> nn.Sequential:
    """Four 3x3 conv-BN-ReLU layers (two 2x2 poolings), then linear-BN-ReLU and a classifier."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), bn2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), bn1d(128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def lenet(bn2d: Callable[[int], nn.Module], bn1d: Callable[[int], nn.Module]) -> nn.Sequential:
    """Seed 002's LeNet for 8x8 digits: BatchNorm after both convolutions and both linears."""
    return LeNet("bn", in_size=8, activation=nn.ReLU, norm2d=bn2d, norm1d=bn1d)


NETWORKS = {  # name -> (builder, input shape)
    "LeNet, 8x8 digits": (lenet, (256, 1, 8, 8)),
    "VGG-style, 32x32 RGB": (vgg_style, (16, 3, 32, 32)),
}


def candidates(build: Callable, shape: tuple[int, ...]) -> dict[str, nn.Module]:
    """The network with torch's BatchNorm (trained running statistics), normtut's, and folded."""
    torch.manual_seed(0)
    with_torch = build(nn.BatchNorm2d, nn.BatchNorm1d)
    with torch.no_grad():  # move the running statistics away from (0, 1)
        for _ in range(3):
            with_torch(torch.randn(shape) * 2 + 0.5)
    with_torch.eval()
    with_normtut = build(normtut.BatchNorm2d, normtut.BatchNorm1d)
    with_normtut.load_state_dict(with_torch.state_dict())
    return {
        "torch BatchNorm": with_torch,
        "normtut BatchNorm": with_normtut.eval(),
        "folded": normtut.fold_batchnorm(with_torch),
    }


def cpu_seconds(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    """CPU time of one forward pass, averaged over ``reps`` calls."""
    start = time.thread_time()
    for _ in range(reps):
        model(x)
    return (time.thread_time() - start) / reps


def measure(models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """name -> (median seconds per forward, median of its per-round ratio to the first model)."""
    names = list(models)
    with torch.inference_mode():
        reference = models[names[0]](x)
        for name in names[1:]:  # the candidates compute the same thing
            torch.testing.assert_close(models[name](x), reference, rtol=1e-4, atol=1e-4)
        for model in models.values():  # warm up
            cpu_seconds(model, x, 3)
        reps = max(1, round(ROUND_CPU_SECONDS / cpu_seconds(models[names[0]], x, 3)))
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(ROUNDS):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
                times[name].append(cpu_seconds(models[name], x, reps))
    base = times[names[0]]
    return {
        name: (
            statistics.median(t),
            statistics.median(a / b for a, b in zip(t, base, strict=True)),
        )
        for name, t in times.items()
    }


def main() -> int:
    torch.set_num_threads(1)
    rows, ok = [], True
    print(f"{'network':22s} {'input':16s} {'candidate':18s} {'ms':>8s} {'vs torch BN':>12s}")
    for network, (build, shape) in NETWORKS.items():
        x = torch.randn(shape)
        for name, (seconds, ratio) in measure(candidates(build, shape), x).items():
            flag = "  <-- target missed" if name == "folded" and ratio >= TARGET else ""
            ok &= not flag
            size = "x".join(map(str, shape))
            print(f"{network:22s} {size:16s} {name:18s} {seconds * 1e3:8.3f} {ratio:12.2f}{flag}")
            rows.append([network, size, name, f"{seconds * 1e3:.3f}", f"{ratio:.2f}"])
    with CSV_PATH.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["network", "input", "BatchNorm", "CPU ms per forward", "vs torch BN"])
        writer.writerows(rows)
    verdict = "met" if ok else "MISSED"
    print(f"target: folded / torch BatchNorm < {TARGET}: {verdict}; wrote {CSV_PATH.name}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
