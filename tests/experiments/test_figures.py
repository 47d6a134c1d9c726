"""normtut.experiments.figures: which values share statistics (checked against torch), and what the cube figure shades."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from normtut.experiments.figures import METHODS, SHARED_COLOR, TITLES, norm_cubes, shared_block

N, C, H, W, G = 3, 6, 2, 3, 3


def torch_layer(method: str) -> nn.Module:
    return {
        "BN": nn.BatchNorm2d(C),  # training mode: batch statistics
        "LN": nn.LayerNorm((C, H, W)),
        "IN": nn.InstanceNorm2d(C),
        "GN": nn.GroupNorm(G, C),
    }[method].double()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("anchor", [(0, 0), (2, 3), (1, 5)])
def test_shared_block_is_what_torch_couples(method, anchor):
    # Nudge one input value: exactly the outputs that share its mean and variance move.
    torch.manual_seed(0)
    x = torch.randn(N, C, H, W, dtype=torch.float64)
    layer = torch_layer(method)
    nudged = x.clone()
    nudged[anchor[0], anchor[1], 1, 2] += 1.0
    with torch.no_grad():
        changed = (layer(nudged) != layer(x)).reshape(N, C, H * W).numpy()
    np.testing.assert_array_equal(
        shared_block(method, N, C, H * W, groups=G, anchor=anchor), changed
    )


def test_shared_block_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        shared_block("SN", N, C, H * W)
    with pytest.raises(ValueError, match="not divisible"):
        shared_block("GN", N, 5, H * W, groups=2)


def test_norm_cubes_shades_the_shared_cells():
    n, c, hw, groups = 4, 6, 5, 2  # all different, so a swapped axis would change the counts
    size = c // groups
    # Shaded cells on the three visible sides (front: sample 0, left: channel 0, top), by hand.
    expected = {
        "BN": hw + n * hw + n,  # channel 0: one front column, the whole left side, one top row
        "LN": c * hw + hw + c,  # sample 0: the whole front, one left column, one top row
        "IN": hw + hw + 1,  # sample 0, channel 0: the front-left column and its top cell
        "GN": size * hw + hw + size,  # sample 0, channels of group 0
    }
    fig = norm_cubes(n=n, c=c, hw=hw, groups=groups)
    try:
        assert isinstance(fig, Figure)
        assert len(fig.axes) == len(METHODS)
        shaded = mcolors.to_rgba(SHARED_COLOR)
        for ax, method in zip(fig.axes, METHODS, strict=True):
            assert ax.name == "3d"
            assert ax.get_title() == TITLES[method]
            (cells,) = ax.collections
            colors = cells.get_facecolor()
            assert len(colors) == c * hw + n * hw + c * n
            assert np.all(np.isclose(colors, shaded), axis=1).sum() == expected[method]
    finally:
        plt.close(fig)


def test_norm_cubes_subset_of_methods():
    fig = norm_cubes(methods=("IN", "GN"))
    try:
        assert [ax.get_title() for ax in fig.axes] == [TITLES["IN"], TITLES["GN"]]
    finally:
        plt.close(fig)


def test_norm_cubes_grid():
    fig = norm_cubes(ncols=2)
    try:
        assert [ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes] == [(2, 2)] * 4
        assert [ax.get_title() for ax in fig.axes] == [TITLES[m] for m in METHODS]
    finally:
        plt.close(fig)
