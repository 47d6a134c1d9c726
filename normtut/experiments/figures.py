"""Figures for the book, drawn with matplotlib.

``norm_cubes`` draws the feature map [N, C, H*W] as a cube, once per method, and shades
the values that share one mean and one variance, in the manner of Figure 2 of
Wu & He, "Group Normalization" (2018). ``shared_block`` says which values those are.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
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
