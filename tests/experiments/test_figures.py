"""normtut.experiments.figures: what each figure claims (checked against torch) and what it draws."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from normtut.experiments.figures import (
    IDLE_COLOR,
    METHODS,
    RUNNING_COLOR,
    SHARED_COLOR,
    TITLES,
    UPDATE_COLOR,
    batchnorm_case,
    batchnorm_flow,
    double_well_plot,
    norm_cubes,
    paths_plot,
    running_mean_trace,
    shared_block,
)
from normtut.experiments.landscape import double_well

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


CASES = [(True, True), (False, True), (True, False), (False, False)]


@pytest.mark.parametrize(("training", "track"), CASES)
def test_batchnorm_case_is_what_torch_does(training, track):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64) * 2 + 1
    bn = nn.BatchNorm2d(3, track_running_stats=track).double().train(training)
    if track:  # buffers far from this batch's statistics, so the two routes differ
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
    before = None if not track else (bn.running_mean.clone(), bn.running_var.clone())
    with torch.no_grad():
        y = bn(x)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    by_batch = (x - mean) / torch.sqrt(var + bn.eps)
    by_running = (x - 5.0) / torch.sqrt(torch.tensor(9.0 + bn.eps, dtype=torch.float64))
    case = batchnorm_case(training, track)
    expected = by_batch if case["normalize"] == "batch" else by_running
    torch.testing.assert_close(y, expected)
    if case["buffers"] == "none":
        assert bn.running_mean is None and bn.running_var is None
    else:
        moved = not torch.equal(before[0], bn.running_mean)
        assert moved == (case["buffers"] == "updated")
        assert int(bn.num_batches_tracked) == (1 if moved else 0)


def _patch_colors(ax):
    return {p.get_gid(): mcolors.to_rgba(p.get_edgecolor()) for p in ax.patches if p.get_gid()}


def test_batchnorm_flow_colors_the_paths_each_case_takes():
    fig = batchnorm_flow()
    try:
        assert len(fig.axes) == 4
        by_title = {ax.get_title(): ax for ax in fig.axes}
        for training, track in CASES:
            mode = "model.train()" if training else "model.eval()"
            ax = by_title[f"{mode}, track_running_stats={track}"]
            colors = _patch_colors(ax)
            case = batchnorm_case(training, track)
            idle = mcolors.to_rgba(IDLE_COLOR)
            assert (colors["update"] == mcolors.to_rgba(UPDATE_COLOR)) == (
                case["buffers"] == "updated"
            )
            assert (colors["running-normalizes"] == mcolors.to_rgba(RUNNING_COLOR)) == (
                case["normalize"] == "running"
            )
            assert (colors["batch-normalizes"] == idle) == (case["normalize"] == "running")
            assert (colors["buffers"] == idle) == (case["buffers"] == "none")
            texts = " ".join(t.get_text() for t in ax.texts)
            assert ("None" in texts) == (case["buffers"] == "none")
    finally:
        plt.close(fig)


def test_running_mean_trace_draws_the_given_series():
    means = torch.tensor([1.0, 2.0, 3.0, 2.5])
    runs = {"m = 0.5": torch.tensor([0.0, 0.5, 1.25, 2.125, 2.3125])}
    fig = running_mean_trace(means, runs, target=2.0, zoom_last=2)
    try:
        left, right = fig.axes
        dots, line, *_ = left.get_lines()
        np.testing.assert_array_equal(dots.get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(dots.get_ydata(), means.numpy())
        np.testing.assert_array_equal(line.get_ydata(), runs["m = 0.5"].numpy())
        assert line.get_label() == "m = 0.5"
        zoom_dots, zoom_line, *_ = right.get_lines()
        np.testing.assert_array_equal(zoom_dots.get_xdata(), [3, 4])
        np.testing.assert_array_equal(zoom_line.get_xdata(), [2, 3, 4])
    finally:
        plt.close(fig)


def test_paths_plot_and_double_well_plot():
    paths = {"a": torch.arange(5.0), "b": torch.zeros(5)}
    fig = paths_plot(paths, {"local min": 1.0, "hilltop": 0.5}, steps=3, mark_step=2)
    try:
        (ax,) = fig.axes
        a, b, *refs = ax.get_lines()
        np.testing.assert_array_equal(a.get_ydata(), [0, 1, 2, 3])
        assert [t.get_text() for t in ax.texts] == ["local min", "hilltop"]
        assert len(refs) == 3  # two levels and the step marker
    finally:
        plt.close(fig)
    fig = double_well_plot(double_well, {"local min": 1.0, "start": 2.0}, paths)
    try:
        left, right = fig.axes
        assert [t.get_text() for t in left.texts] == ["local min", "start"]
        assert [line.get_label() for line in right.get_lines()[:2]] == ["a", "b"]
    finally:
        plt.close(fig)
