"""normtut.experiments.transformers: the chapter's models and measurements."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from torch import nn

import normtut
from normtut.experiments.transformers import (
    Block,
    ChannelsLayerNorm,
    SmallResNet,
    gradient_norms_at_init,
    plot_gradient_norms,
    record_norm_inputs,
    tiny_transformer,
)

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("pre_ln", [True, False])
def test_block_is_the_formula(pre_ln):
    torch.manual_seed(0)
    block = Block(8, 2, pre_ln)
    x = torch.randn(2, 5, 8)

    def attend(t):
        return block.attn(t, t, t, need_weights=False)[0]

    if pre_ln:
        h = x + attend(block.norm1(x))
        expected = h + block.mlp(block.norm2(h))
    else:
        h = block.norm1(x + attend(x))
        expected = block.norm2(h + block.mlp(h))
    torch.testing.assert_close(block(x), expected)
    assert isinstance(tiny_transformer(3, 8, 2, pre_ln)[-1], normtut.LayerNorm if pre_ln else Block)


def test_gradient_norms_are_per_block_and_reproducible():
    a = gradient_norms_at_init(True, depth=3, width=16, tokens=4, batch=2)
    assert len(a) == 3 and all(v > 0 for v in a)
    assert a == gradient_norms_at_init(True, depth=3, width=16, tokens=4, batch=2)
    assert len(gradient_norms_at_init(False, norm="rms", depth=2, width=16, tokens=4)) == 2
    fig = plot_gradient_norms(a, a)
    assert len(fig.axes[0].lines) == 2


def test_channels_layer_norm_is_layer_norm_over_c_at_each_position():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 4)
    y = ChannelsLayerNorm(6)(x)
    expected = nn.functional.layer_norm(x.permute(0, 2, 3, 1), [6], eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, expected)
    assert not torch.allclose(y, nn.GroupNorm(1, 6, eps=1e-6)(x))  # not GroupNorm(1, C)


def test_small_resnet_converts_and_records():
    torch.manual_seed(0)
    model = SmallResNet().double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    reference = model(x)
    normtut.convert_norm_layers(model)
    torch.testing.assert_close(model(x), reference, rtol=1e-10, atol=1e-10)
    seen = record_norm_inputs(model, x)
    assert [kind for _, kind, _, _ in seen] == ["BatchNorm2d"] * 5 + ["GroupNorm", "LayerNorm"]
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are removed
