"""running_stats_history on normtut's BatchNorm against torch's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normtut
from normtut.experiments.running import (
    ddp_running_means,
    ema_spread,
    running_mean_spread,
    running_stats_history,
)


@pytest.mark.parametrize("momentum", [0.1, 0.9, None])
def test_history_matches_torch(momentum):
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 4, 4) * 2 + 5 for _ in range(30)]
    ours = running_stats_history(normtut.BatchNorm2d(3, momentum=momentum), batches)
    ref_layer = nn.BatchNorm2d(3, momentum=momentum)
    ref = running_stats_history(ref_layer, batches)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == (31, 3)
        torch.testing.assert_close(a, b)
    assert torch.equal(ref[0][-1], ref_layer.running_mean) and torch.equal(
        ref[1][-1], ref_layer.running_var
    )
    assert torch.equal(ref[0][0], torch.zeros(3)) and torch.equal(ref[1][0], torch.ones(3))


def test_history_puts_the_layer_in_training_mode():
    layer = nn.BatchNorm2d(2).eval()
    means, _ = running_stats_history(layer, [torch.ones(2, 2, 2, 2) * 3])
    assert layer.training and means[1].tolist() == pytest.approx([0.3, 0.3])


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_running_mean_spread_follows_the_formula(momentum):
    # 2000 streams: the measured std is within a few percent of the formula.
    measured = running_mean_spread(momentum, streams=2000, steps=60)
    assert measured == pytest.approx(ema_spread(momentum, 60), rel=0.06)


def test_running_mean_spread_same_for_torch_and_normtut():
    ours = running_mean_spread(0.3, streams=50, steps=20)
    theirs = running_mean_spread(0.3, streams=50, steps=20, layer=nn.BatchNorm2d)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_ema_spread_limits():
    assert ema_spread(1.0, 5) == pytest.approx(1.0)  # momentum 1: the last batch alone
    assert ema_spread(0.1, 1) == pytest.approx(0.1)  # one step: m times one batch mean
    assert ema_spread(0.1, 10_000) == pytest.approx((0.1 / 1.9) ** 0.5)


def test_ddp_running_means_broadcasts_rank_0s_buffers():
    # Rank r sees batch means 10 r + 1.5, then 10 r + 2.5; momentum 0.1.
    synced = ddp_running_means(world_size=2, steps=2, sync=True)
    local = ddp_running_means(world_size=2, steps=2, sync=False)
    rank0 = 0.9 * (0.1 * 1.5) + 0.1 * 2.5  # rank 0 only ever sees its own batches
    assert synced == pytest.approx([rank0, 0.9 * (0.1 * 1.5) + 0.1 * 12.5])
    assert local == pytest.approx([rank0, 0.9 * (0.1 * 11.5) + 0.1 * 12.5])
