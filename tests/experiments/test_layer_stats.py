"""Snapshots of a hidden layer and their drift measures, against direct computation."""

from __future__ import annotations

import copy
import math

import matplotlib
import torch
from torch import nn

from normtut.experiments import layer_stats

matplotlib.use("Agg")


def test_snapshots_see_the_layer_in_training_mode_without_touching_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    probe = torch.randn(16, 4) * 3 + 1
    before = copy.deepcopy(model.state_dict())
    snaps = layer_stats.Snapshots(
        model, probe, {"bn in": (1, "input"), "bn out": (1, "output")}, every=2
    )
    snaps(1, 0.0)  # not a multiple of every: ignored
    with torch.no_grad():
        model[0].weight.mul_(2)
    snaps(2, 0.0)
    assert snaps.steps == [0, 2]
    values = snaps.stacked()
    with torch.no_grad():
        h = model[0](probe)
        expected_out = nn.functional.batch_norm(
            h, None, None, model[1].weight, model[1].bias, training=True
        )
    torch.testing.assert_close(values["bn in"][1], h)
    torch.testing.assert_close(values["bn out"][1], expected_out)
    assert torch.equal(model[1].running_mean, before["1.running_mean"])  # the probe ran on a copy
    assert model[1].num_batches_tracked == 0


def test_conv_maps_are_averaged_over_space():
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1))
    probe = torch.randn(5, 1, 4, 4)
    snaps = layer_stats.Snapshots(model, probe, {"conv": (0, "output")})
    with torch.no_grad():
        torch.testing.assert_close(snaps.stacked()["conv"][0], model(probe).mean((2, 3)))


def test_drift_and_jump_against_hand_computed_values():
    # Two units over three snapshots of two probe images.
    values = torch.tensor(
        [
            [[0.0, 10.0], [2.0, 10.0]],  # unit 0: mean 1, sd 1; unit 1: constant (dead)
            [[1.0, 10.0], [3.0, 10.0]],  # unit 0: mean 2, sd 1
            [[3.0, 10.0], [7.0, 10.0]],  # unit 0: mean 5, sd 2
        ]
    )
    mean, std = layer_stats.unit_moments(values)
    torch.testing.assert_close(mean[:, 0], torch.tensor([1.0, 2.0, 5.0]))
    torch.testing.assert_close(std[:, 0], torch.tensor([1.0, 1.0, 2.0]))
    assert layer_stats.drift(values) == (4.0, 2.0)  # the dead unit (sd 0) is skipped
    assert layer_stats.jump(values) == 1.0  # 1/1 and 3/1: torch's median takes the lower middle


def test_plot_percentiles():
    values = torch.randn(4, 50, 3)
    fig = layer_stats.plot_percentiles(
        {"a": ([0, 5, 10, 15], values), "b": ([0, 5, 10, 15], values)}
    )
    assert len(fig.axes) == 2
    median = fig.axes[0].lines[0].get_ydata()
    torch.testing.assert_close(torch.as_tensor(median), values[:, :, 0].quantile(0.5, dim=1))
    assert not math.isnan(float(median[0]))
