"""running_stats_history on normtut's BatchNorm against torch's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normtut
from normtut.experiments.running import running_stats_history


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
