"""Figures and tables for the backward-pass chapter.

``forward_graph`` draws BatchNorm's forward pass as a computational graph; ``coupling``
draws the Jacobian dy/dx of a BatchNorm layer in training and in evaluation, computed
through normtut's own backward; ``saved_bytes`` measures what autograd keeps for backward;
``read_bench`` and ``bench_table`` read and format the committed results of ``make bench``,
``bench_chart`` plots them.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

import normtut

# Node -> (x, y, label) of the forward graph; edges go from inputs to outputs.
GRAPH_NODES = {
    "x": (0.0, 1.0, r"$x$"),
    "mu": (1.3, 2.1, r"$\mu = \frac{1}{n}\sum x$"),
    "xc": (2.5, 1.0, r"$x - \mu$"),
    "var": (4.0, 2.1, r"$\sigma^2 = \frac{1}{n}\sum (x-\mu)^2$"),
    "rstd": (6.3, 2.1, r"$r = (\sigma^2+\epsilon)^{-1/2}$"),
    "xhat": (7.3, 1.0, r"$\hat x = (x-\mu)\,r$"),
    "gamma": (7.3, 0.0, r"$\gamma$"),
    "beta": (8.8, 0.0, r"$\beta$"),
    "y": (8.8, 1.0, r"$y = \gamma \hat x + \beta$"),
}
GRAPH_EDGES = [
    ("x", "mu"), ("x", "xc"), ("mu", "xc"), ("xc", "var"), ("var", "rstd"),
    ("xc", "xhat"), ("rstd", "xhat"), ("xhat", "y"), ("gamma", "y"), ("beta", "y"),
]  # fmt: skip
REDUCTIONS = {("x", "mu"), ("xc", "var")}  # edges that sum over the n values of a channel


def forward_graph() -> Figure:
    """BatchNorm's forward pass for one channel as a graph; the reductions are drawn red.

    Backpropagation walks the arrows backwards; the two sums of the forward pass become the
    two sums of the backward pass.
    """
    fig, ax = plt.subplots(figsize=(10, 3.2))
    boxes = {
        name: ax.text(x, y, label, ha="center", va="center", fontsize=11,
                      bbox={"boxstyle": "round,pad=0.35", "fc": "#eef3fb", "ec": "#5b8fd6"})
        for name, (x, y, label) in GRAPH_NODES.items()
    }  # fmt: skip
    for a, b in GRAPH_EDGES:  # arrows from box edge to box edge
        color = "#c0392b" if (a, b) in REDUCTIONS else "#555555"
        ax.annotate("", xy=GRAPH_NODES[b][:2], xytext=GRAPH_NODES[a][:2],
                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.6,
                                "patchA": boxes[a].get_bbox_patch(),
                                "patchB": boxes[b].get_bbox_patch()})  # fmt: skip
    ax.text(0.5, 1.65, "sum", color="#c0392b", fontsize=9, ha="center")
    ax.text(3.1, 1.65, "sum", color="#c0392b", fontsize=9, ha="center")
    ax.set_xlim(-0.5, 9.7)
    ax.set_ylim(-0.5, 2.5)
    ax.axis("off")
    fig.tight_layout()
    return fig


def batchnorm_jacobian(n: int = 8, train: bool = True, seed: int = 0) -> torch.Tensor:
    """dy_i/dx_j for one channel of a BatchNorm1d over ``n`` samples: an [n, n] matrix.

    Computed by torch.autograd.functional.jacobian: one call of normtut's hand-written
    backward per output.
    """
    gen = torch.Generator().manual_seed(seed)
    # In training, no running buffers: a transform may not update a buffer in place.
    layer = normtut.BatchNorm1d(1, track_running_stats=not train).double().train(train)
    if not train:
        with torch.no_grad():
            layer.running_var.fill_(1.5)
    x = torch.randn(n, 1, dtype=torch.float64, generator=gen)
    return torch.autograd.functional.jacobian(layer, x)[:, 0, :, 0].detach()


def coupling(n: int = 8) -> Figure:
    """The Jacobian dy/dx of one BatchNorm channel over a batch, in training and in eval.

    In eval it is diagonal: each sample's output depends on its own input only. In training
    every output depends on every input of the batch through the mean and the variance.
    """
    jacobians = {"training (batch statistics)": batchnorm_jacobian(n, True),
                 "evaluation (running statistics)": batchnorm_jacobian(n, False)}  # fmt: skip
    limit = max(j.abs().max().item() for j in jacobians.values())
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.9))
    for ax, (title, jac) in zip(axes, jacobians.items(), strict=True):
        image = ax.imshow(jac.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("input sample $j$")
        ax.set_ylabel("output sample $i$")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
    fig.colorbar(image, ax=axes, shrink=0.85, label=r"$\partial y_i / \partial x_j$")
    return fig


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``."""
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def read_bench(path: str | Path) -> list[dict[str, object]]:
    """The rows of ``benchmarks/bench.csv``, numbers as floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            if key not in ("layer", "shape"):
                row[key] = float(value)
    return rows


def bench_table(rows: list[dict[str, object]]) -> str:
    """One line per layer: median ratios to torch over the shapes, and memory."""

    def median(rows, key):
        return statistics.median(r[key] for r in rows)

    lines = [
        f"{'layer':20s} {'fwd':>5s} {'fwd+bwd':>8s} {'compiled':>9s} "
        f"{'saved ours/torch':>17s} {'peak ours/torch':>16s}"
    ]
    for layer in dict.fromkeys(r["layer"] for r in rows):
        mine = [r for r in rows if r["layer"] == layer]
        compiled = median(mine, "compiled_fwdbwd")
        lines.append(
            f"{layer:20s} {median(mine, 'normtut_fwd'):5.2f} {median(mine, 'normtut_fwdbwd'):8.2f} "
            f"{'n/a' if np.isnan(compiled) else f'{compiled:.2f}':>9s} "
            f"{median(mine, 'saved_normtut'):8.1f} / {median(mine, 'saved_torch'):3.1f} "
            f"{median(mine, 'peak_normtut'):9.1f} / {median(mine, 'peak_torch'):3.1f}"
        )
    return "\n".join(lines)


def bench_chart(rows: list[dict[str, object]]) -> Figure:
    """Median forward + backward time over the shapes, as a multiple of torch's, per layer:
    normtut eager and compiled, with each layer's target (the ``target`` column)."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))

    def median(layer, key):
        return statistics.median(r[key] for r in rows if r["layer"] == layer)

    y = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(8, 4.0))
    ax.barh(y - 0.18, [median(lay, "normtut_fwdbwd") for lay in layers], 0.34,
            color="#5b8fd6", label="normtut, eager")  # fmt: skip
    ax.barh(y + 0.18, [median(lay, "compiled_fwdbwd") for lay in layers], 0.34,
            color="#9bc48f", label="normtut, torch.compile")  # fmt: skip
    for i, layer in enumerate(layers):
        ax.plot([median(layer, "target")] * 2, [i - 0.4, i + 0.4], color="#c0392b", lw=2)
    ax.plot([], [], color="#c0392b", lw=2, label="target (eager)")
    ax.axvline(1.0, color="#555555", lw=1, ls="--")
    ax.set_yticks(y, layers)
    ax.invert_yaxis()
    ax.set_xlabel("forward + backward time / torch's (median over shapes)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=9)
    fig.tight_layout()
    return fig
