"""BatchNorm across processes (chapter 11): a two-process demonstration, the wire, figures.

``demo`` is what each of the chapter's two processes runs (``distributed.launch(demo, 2)``):
its slice of ``demo_batch`` through a SyncBatchNorm, forward and backward, then one training
step of LeNet with synchronized BatchNorm under DistributedDataParallel, with every
collective of SyncBatchNorm recorded (``wiretap``). ``traffic`` says what a model's
SyncBatchNorm layers exchange per step. ``merge_figure`` draws two ranks' values and their
statistics, separate and merged; ``settings_figure`` the chapter's experiment.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
from matplotlib.figure import Figure
from torch import Tensor, nn

from .. import functional as F
from ..batchnorm import _BatchNorm
from ..syncbatchnorm import SyncBatchNorm
from . import digits

DEMO_SIZES = (3, 5)  # samples of rank 0 and of rank 1
RANK_COLORS = ("C0", "C1", "C2", "C3")


def demo_batch() -> tuple[Tensor, Tensor]:
    """8 samples of 2 features, and a gradient dy for them; rank 1's 5 samples sit higher."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, generator=gen).mul(2).round().div(2)  # multiples of 0.5
    x[DEMO_SIZES[0] :] += torch.tensor([4.0, 1.0])  # rank 1's slice comes from elsewhere
    return x, torch.randn(8, 2, generator=gen)


def my_slice(rank: int, sizes: Sequence[int] = DEMO_SIZES) -> slice:
    """The samples of rank ``rank`` when ranks hold ``sizes`` consecutive samples each."""
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


@contextlib.contextmanager
def wiretap() -> Iterator[list[tuple[str, int]]]:
    """Record this process's ``all_gather`` and ``all_reduce`` calls: (name, numbers sent).

    SyncBatchNorm calls them through ``torch.distributed``; DistributedDataParallel's own
    gradient all-reduce runs in C++ and is not seen here.
    """
    calls: list[tuple[str, int]] = []
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_reduce")}

    def tap(name: str):
        def call(*args, **kwargs):
            sent = args[1] if name == "all_gather" else args[0]  # (outputs, input) / (tensor)
            calls.append((name, sent.numel()))
            return originals[name](*args, **kwargs)

        return call

    for name in originals:
        setattr(dist, name, tap(name))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def demo() -> dict:
    """One rank of the chapter's demonstration (call it in a group of two processes)."""
    rank = dist.get_rank()
    x, dy = demo_batch()
    mine = my_slice(rank)
    layer = SyncBatchNorm(2)
    xr = x[mine].clone().requires_grad_()
    with wiretap() as wire:
        y = layer(xr)
        forward = len(wire)
        y.backward(dy[mine])
    return {
        "moments": F.partial_moments(x[mine], (0,)),  # what this rank sent: n, mean, M2
        "y": y.detach(),
        "dx": xr.grad,
        "dweight": layer.weight.grad,
        "dbias": layer.bias.grad,
        "running_mean": layer.running_mean,
        "running_var": layer.running_var,
        "wire": {"forward": wire[:forward], "backward": wire[forward:]},
        "lenet_wire": lenet_step(),
    }


def lenet_step(images: int = 2) -> list[tuple[str, int]]:
    """SyncBatchNorm's collectives in one DDP training step of the book's LeNet."""
    model = SyncBatchNorm.convert_sync_batchnorm(digits.lenet("bn", seed=0))
    ddp = nn.parallel.DistributedDataParallel(model)
    gen = torch.Generator().manual_seed(dist.get_rank())
    x, target = torch.rand(images, 1, 8, 8, generator=gen), torch.tensor([3] * images)
    with wiretap() as wire:
        nn.functional.cross_entropy(ddp(x), target).backward()
    return wire


def traffic(model: nn.Module, ranks: int) -> list[dict[str, object]]:
    """Per BatchNorm layer of ``model``: what it exchanges per training step when synchronized.

    Forward: each rank sends 2C + 1 numbers (count, C means, C sums of squared deviations)
    and receives every rank's. Backward: 2C numbers (sum dy, sum dy * (x - mean)) summed
    over the ranks. DDP all-reduces every parameter's gradient in any case.
    """
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, (_BatchNorm, nn.modules.batchnorm._BatchNorm)):
            C = m.num_features
            rows.append(
                {
                    "layer": name,
                    "C": C,
                    "sent": 2 * C + 1,
                    "gathered": ranks * (2 * C + 1),
                    "all-reduced": 2 * C,
                }  # fmt: skip
            )
    return rows


def merge_figure(parts: Sequence[Tensor]) -> Figure:
    """One feature's values on each rank and on all ranks together, with mean ± std.

    The bottom row is what averaging the ranks' means and variances would give.
    """
    fig, ax = plt.subplots(figsize=(8, 3.4))
    rows = [(f"rank {r}", p, RANK_COLORS[r]) for r, p in enumerate(parts)]
    rows.append(("all ranks", torch.cat(list(parts)), "k"))
    left = min(p.min().item() for p in parts)
    for i, (label, values, color) in enumerate(rows):
        y = len(rows) - i
        mean, var = F.moments(values.double(), (0,))
        ax.scatter(values, [y] * len(values), color=color, s=30, zorder=3, alpha=0.8)
        _bracket(ax, y, left, mean.item(), var.sqrt().item(), color, f"{label}, n = {len(values)}")
    means = [F.moments(p.double(), (0,)) for p in parts]
    avg_mean = statistics.mean(m.item() for m, _ in means)
    avg_std = statistics.mean(v.item() for _, v in means) ** 0.5
    label = "the ranks' means and variances averaged"
    _bracket(ax, 0, left, avg_mean, avg_std, "C3", label, dashed=True)
    ax.set_yticks([])
    ax.set_ylim(-0.6, len(rows) + 0.6)
    ax.set_xlabel("value of the feature; bars: mean ± one standard deviation")
    ax.spines[["left", "top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def _bracket(ax, y, left, mean, std, color, label, dashed=False) -> None:
    """A bar from mean - std to mean + std under row ``y``, titled at the left."""
    ax.plot([mean - std, mean + std], [y - 0.2] * 2, "--" if dashed else "-", color=color, lw=2)
    ax.plot([mean], [y - 0.2], "|", color=color, ms=12, mew=2)
    text = f"{label}:  mean {mean:.2f}, std {std:.2f}"
    ax.text(left, y + 0.22, text, color=color, fontsize=9, va="bottom")


def settings_figure(errors: Mapping[str, Sequence[float]]) -> Figure:
    """Test error of each setting: every seed as a dot, the mean as a bar (log scale)."""
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(errors) + 1.2))
    labels = list(errors)
    for i, label in enumerate(labels):
        y = len(labels) - 1 - i
        values = list(errors[label])
        ax.barh(y, statistics.mean(values), color="C0", alpha=0.25, height=0.6)
        ax.scatter(values, [y] * len(values), color="C0", s=22, zorder=3)
    ax.set_yticks(range(len(labels) - 1, -1, -1), labels)
    ax.set_xscale("log")
    ticks = [1, 2, 5, 10, 20, 50, 100]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("test error (%, log scale): seeds (dots) and their mean (bar)")
    fig.tight_layout()
    return fig
