"""Figures for the book, drawn with matplotlib.

``norm_cubes`` draws the feature map [N, C, H*W] as a cube, once per method, and shades
the values that share one mean and one variance, in the manner of Figure 2 of
Wu & He, "Group Normalization" (2018). ``shared_block`` says which values those are.

``batchnorm_flow`` draws BatchNorm's four cases (``train()``/``eval()`` times
``track_running_stats``): which statistics normalize and what happens to the buffers, as
``batchnorm_case`` says. ``running_mean_trace`` draws running means following noisy batch
means; ``paths_plot`` and ``double_well_plot`` draw optimizer trajectories.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

METHODS = ("BN", "LN", "IN", "GN")
TITLES = {"BN": "Batch Norm", "LN": "Layer Norm", "IN": "Instance Norm", "GN": "Group Norm"}
SHARED_COLOR = "#5b8fd6"  # the values normalized together
OTHER_COLOR = "#ffffff"
EDGE_COLOR = "#7f7f7f"


def shared_block(
    method: str,
    n: int,
    c: int,
    hw: int,
    groups: int = 2,
    anchor: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Mask [N, C, H*W]: the values normalized together with x[anchor].

    ``anchor`` is (sample, channel); ``groups`` is GroupNorm's number of groups.
    """
    n0, c0 = anchor
    mask = np.zeros((n, c, hw), dtype=bool)
    if method == "BN":
        mask[:, c0, :] = True  # one channel: every sample, every position
    elif method == "LN":
        mask[n0, :, :] = True  # one sample: every channel, every position
    elif method == "IN":
        mask[n0, c0, :] = True  # one sample, one channel
    elif method == "GN":
        if c % groups != 0:
            raise ValueError(f"channels ({c}) not divisible by groups ({groups})")
        size = c // groups  # channels per group
        g = c0 // size
        # one sample, the channels of one group
        mask[n0, g * size : (g + 1) * size, :] = True
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return mask


def cube_faces(shared: np.ndarray) -> tuple[list[np.ndarray], list[bool]]:
    """Cells of the cube's three visible sides (front, left, top), and whether each is shaded.

    ``shared`` is a mask [N, C, H*W]; a cell is a 4-corner polygon in (x, y, z) = (C, N, H*W).
    Drawing only the visible sides avoids matplotlib's depth-sorting errors between voxels.
    """
    n, c, hw = shared.shape
    quads, flags = [], []
    for ci in range(c):  # front side: sample 0
        for k in range(hw):
            quads.append(np.array([[ci, 0, k], [ci + 1, 0, k], [ci + 1, 0, k + 1], [ci, 0, k + 1]]))
            flags.append(bool(shared[0, ci, k]))
    for ni in range(n):  # left side: channel 0
        for k in range(hw):
            quads.append(np.array([[0, ni, k], [0, ni + 1, k], [0, ni + 1, k + 1], [0, ni, k + 1]]))
            flags.append(bool(shared[ni, 0, k]))
    for ci in range(c):  # top side: the last position
        for ni in range(n):
            quads.append(
                np.array([[ci, ni, hw], [ci + 1, ni, hw], [ci + 1, ni + 1, hw], [ci, ni + 1, hw]])
            )
            flags.append(bool(shared[ni, ci, hw - 1]))
    return quads, flags


def norm_cubes(
    methods: Sequence[str] = METHODS,
    n: int = 6,
    c: int = 6,
    hw: int = 6,
    groups: int = 3,
    ncols: int = 4,
) -> Figure:
    """One cube [N, C, H*W] per method, shading the values that share one set of statistics.

    Shaded are the values that share sample 0, channel 0's statistics under that method.
    C runs left to right, N into the page, H, W upwards; the panels fill ``ncols`` columns.
    Returns the Figure, with one 3-D Axes per method.
    """
    ncols = min(ncols, len(methods))
    nrows = -(-len(methods) // ncols)  # ceil
    fig = plt.figure(figsize=(3.2 * ncols, 3.4 * nrows))
    for i, method in enumerate(methods):
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="3d")
        quads, flags = cube_faces(shared_block(method, n, c, hw, groups))
        colors = [SHARED_COLOR if f else OTHER_COLOR for f in flags]
        ax.add_collection3d(
            Poly3DCollection(quads, facecolors=colors, edgecolors=EDGE_COLOR, linewidths=0.5)
        )
        ax.set_xlim(0, c)
        ax.set_ylim(0, n)
        ax.set_zlim(0, hw)
        ax.set_box_aspect((c, n, hw))
        ax.view_init(elev=24, azim=-115)
        ax.set_axis_off()
        # Axis names by the cube's edges: C at the front, N on the left, H, W at the back-left.
        ax.text(c / 2, -0.3, -0.5, "C", ha="center", va="top", fontsize=14)
        ax.text(-0.3, n / 2, -0.5, "N", ha="right", va="top", fontsize=14)
        ax.text(-0.3, n, hw / 2, "H, W", ha="right", va="center", fontsize=14)
        ax.set_title(TITLES.get(method, method), fontsize=15)
    # 3-D text is left out of a tight bounding box (Jupyter's default when it shows a figure),
    # which would crop the "H, W" labels: an empty label at the left edge keeps them in.
    fig.text(0.0, 0.5, " ")
    fig.subplots_adjust(left=0.1, right=0.99, bottom=0.02, top=0.93, wspace=0.15, hspace=0.12)
    return fig


# ---------------------------------------------------------------------------
# BatchNorm's four cases: training/eval times track_running_stats.
# ---------------------------------------------------------------------------

BATCH_COLOR = "#e08a2e"  # the batch's statistics
RUNNING_COLOR = "#3b75c4"  # the running buffers
UPDATE_COLOR = "#2f9e44"  # an update of the buffers
IDLE_COLOR = "#b8b8b8"  # a path the case does not take
FLOW_FONT = 10.5  # the figure is shown about 700 px wide: keep its text readable there


def batchnorm_case(training: bool, track_running_stats: bool) -> dict[str, str]:
    """What a BatchNorm layer does in one case, as torch 2.13's ``_BatchNorm.forward``.

    ``normalize``: "batch" (this batch's mean and biased variance)
    or "running" (the buffers).
    ``buffers``: "updated" (moved towards the batch, counter += 1),
    "read" (used as they are) or "none" (the buffers are ``None``).
    """
    if not track_running_stats:
        return {"normalize": "batch", "buffers": "none"}
    if training:
        return {"normalize": "batch", "buffers": "updated"}
    return {"normalize": "running", "buffers": "read"}


def _box(
    ax: Axes,
    xy: tuple[float, float],
    w: float,
    h: float,
    text: str,
    color: str,
    active: bool,
    gid: str,
    fontsize: float = FLOW_FONT,
) -> None:
    ax.add_patch(
        FancyBboxPatch(
            xy,
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.15",
            gid=gid,
            facecolor=color if active else "white",
            alpha=0.22 if active else 1.0,
            edgecolor=color if active else IDLE_COLOR,
            linewidth=1.6 if active else 1.0,
            linestyle="-" if active else (0, (3, 2)),
        )
    )
    ax.text(
        xy[0] + w / 2,
        xy[1] + h / 2,
        text,
        ha="center",
        va="center",
        fontsize=fontsize,
        color="black" if active else "#8a8a8a",
    )


def _arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    color: str,
    active: bool,
    gid: str,
    label: str = "",
    rad: float = 0.0,
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=12,
            gid=gid,
            color=color if active else IDLE_COLOR,
            linewidth=2.0 if active else 1.0,
            linestyle="-" if active else (0, (3, 2)),
            connectionstyle=f"arc3,rad={rad}",
        )
    )
    if label:
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        ax.text(
            mid[0] + 0.15,
            mid[1],
            label,
            fontsize=FLOW_FONT - 1,
            va="center",
            ha="left",
            color=color if active else "#8a8a8a",
        )


def _flow_panel(ax: Axes, training: bool, track_running_stats: bool) -> None:
    case = batchnorm_case(training, track_running_stats)
    batch, running = case["normalize"] == "batch", case["normalize"] == "running"
    updated, has_buffers = case["buffers"] == "updated", case["buffers"] != "none"
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 6.8)
    ax.set_axis_off()
    _box(ax, (0.0, 3.4), 1.9, 1.2, "input x", "#555555", True, "input")
    stats = "this batch's\n" + r"$\mu_B$, $\sigma_B^2$"
    _box(ax, (2.6, 3.4), 3.2, 1.2, stats, BATCH_COLOR, batch, "batch-stats")
    formula = r"$y = \gamma\,\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta$"
    _box(ax, (6.5, 3.4), 3.35, 1.2, formula, "#555555", True, "normalize")
    names = "running_mean\nrunning_var\nnum_batches_tracked"
    buffers = names if has_buffers else "no buffers\n(None)"
    active = running or updated
    _box(ax, (2.5, 0.85), 3.4, 1.75, buffers, RUNNING_COLOR, active, "buffers", FLOW_FONT - 1.5)
    # x itself always reaches the formula; its statistics take one of two routes.
    _arrow(ax, (0.95, 4.6), (8.25, 4.6), "#555555", True, "x-to-normalize", rad=-0.2)
    _arrow(ax, (1.9, 4.0), (2.6, 4.0), "#555555", batch, "x-to-batch")
    _arrow(ax, (5.8, 4.0), (6.5, 4.0), BATCH_COLOR, batch, "batch-normalizes")
    _arrow(
        ax,
        (5.8, 1.7),
        (7.4, 3.4),
        RUNNING_COLOR,
        running,
        "running-normalizes",
        label="μ, σ²" if running else "",
    )
    _arrow(
        ax,
        (4.2, 3.4),
        (4.2, 2.6),
        UPDATE_COLOR,
        updated,
        "update",
        label="update" if updated else "",
    )
    if updated:
        note = "buffers move towards the batch\n(the unbiased variance); count += 1"
    elif running:
        note = "buffers are read, not changed"
    else:
        note = "nothing is stored or updated"
    where = "this batch's μ, σ²" if batch else "the buffers"
    ax.text(
        0.0,
        6.7,
        f"normalizes with {where}",
        fontsize=FLOW_FONT + 0.5,
        fontweight="bold",
        color=BATCH_COLOR if batch else RUNNING_COLOR,
        va="top",
    )
    ax.text(
        0.0,
        0.0,
        note,
        fontsize=FLOW_FONT - 1,
        va="bottom",
        color=UPDATE_COLOR if updated else "#555555",
    )


def batchnorm_flow() -> Figure:
    """BatchNorm's four cases as a 2 x 2 grid of data-flow panels.

    Columns: ``model.train()``, ``model.eval()``; rows: ``track_running_stats=True``,
    ``False``. Each panel shows which statistics normalize (batch or running, colored),
    whether the buffers are updated, read or absent; paths not taken are grey and dashed.
    """
    fig, axes = plt.subplots(2, 2, figsize=(9.6, 7.6))
    for row, track in enumerate((True, False)):
        for col, training in enumerate((True, False)):
            ax = axes[row, col]
            _flow_panel(ax, training, track)
            mode = "model.train()" if training else "model.eval()"
            ax.set_title(f"{mode}, track_running_stats={track}", fontsize=FLOW_FONT + 1.5)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.94, wspace=0.08, hspace=0.16)
    return fig


# ---------------------------------------------------------------------------
# Running means following batch means; optimizer trajectories.
# ---------------------------------------------------------------------------


def _series(
    ax: Axes,
    batch_means: torch.Tensor,
    runs: Mapping[str, torch.Tensor],
    target: float | None,
    start: int,
) -> None:
    steps = np.arange(len(batch_means) + 1)  # 0: before the first batch
    ax.plot(
        steps[start + 1 :],  # batch k is seen at step k
        np.asarray(batch_means)[start:],
        "o",
        ms=3,
        color=IDLE_COLOR,
        label="batch means",
        zorder=1,
    )
    for label, run in runs.items():
        ax.plot(steps[start:], np.asarray(run)[start:], lw=1.8, label=label, zorder=2)
    if target is not None:
        ax.axhline(target, color="black", lw=0.8, ls="--", zorder=0)
    ax.set_xlabel("batches seen")
    ax.set_ylabel("mean of the channel")


def running_mean_trace(
    batch_means: torch.Tensor,
    runs: Mapping[str, torch.Tensor],
    target: float | None = None,
    zoom_last: int | None = None,
) -> Figure:
    """Batch means (grey dots) and running means following them (one line each).

    ``batch_means`` has T entries (batch 1..T); each run has T + 1 (the state before the
    first batch, then after each). ``target`` draws the population mean dashed.
    ``zoom_last`` adds a second panel with the last that many batches.
    """
    panels = 1 if zoom_last is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.4 if panels == 1 else 9.8, 3.6), squeeze=False)
    left = axes[0, 0]
    _series(left, batch_means, runs, target, 0)
    left.set_title("from the initial 0" + ("" if target is None else f" (dashed: mean {target:g})"))
    left.legend(fontsize=8, loc="lower right")
    if zoom_last is not None:
        right = axes[0, 1]
        _series(right, batch_means, runs, target, len(batch_means) - zoom_last)
        values = np.asarray(batch_means)[-zoom_last:]
        spread = values.max() - values.min()
        right.set_ylim(values.min() - 0.1 * spread, values.max() + 0.1 * spread)
        right.set_title(f"the last {zoom_last} batches")
    fig.tight_layout()
    return fig


def paths_plot(
    paths: Mapping[str, torch.Tensor],
    levels: Mapping[str, float] | None = None,
    title: str = "",
    steps: int | None = None,
    mark_step: int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Positions x_t against the step t, one line per run.

    ``levels`` are horizontal reference lines with a name (e.g. "local min": 1.0), labelled
    at the right edge; ``steps`` limits the plot to the first steps; ``mark_step`` draws a
    dotted vertical line (e.g. where the learning rate changes).
    """
    fig = plt.figure(figsize=(7, 3.4)) if ax is None else ax.figure
    ax = fig.add_subplot(1, 1, 1) if ax is None else ax
    for label, path in paths.items():
        values = np.asarray(path.detach().flatten())[: None if steps is None else steps + 1]
        ax.plot(values, label=label)
    for name, y in (levels or {}).items():
        ax.axhline(y, color="grey", lw=0.8, ls="--" if name == "hilltop" else "-")
        ax.annotate(
            name,
            (1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color="grey",
        )
    if mark_step is not None:
        ax.axvline(mark_step, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="step", ylabel="x", title=title)
    ax.legend(fontsize=8)
    return fig


def double_well_plot(
    loss, points: Mapping[str, float], paths: Mapping[str, torch.Tensor], title: str = ""
) -> Figure:
    """Left: the 1-D ``loss`` with named ``points``; right: ``paths_plot`` of the runs."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.8, 3.8))
    xs = torch.linspace(-1.8, 2.1, 400, dtype=torch.float64)
    left.plot(xs, loss(xs), color="black", lw=1)
    for name, x in points.items():
        y = loss(torch.tensor(x, dtype=torch.float64)).item()
        left.plot(x, y, "o", color="black", ms=4)
        left.annotate(name, (x, y), xytext=(0, 8), textcoords="offset points", ha="center")
    top = max(loss(torch.tensor(x, dtype=torch.float64)).item() for x in points.values())
    left.set(xlabel="x", ylabel="loss", ylim=(-1, max(6.0, top + 1.5)), title="the loss")
    levels = {k: v for k, v in points.items() if k != "start"}
    paths_plot(paths, levels, title=title, ax=right)
    fig.tight_layout()
    return fig
