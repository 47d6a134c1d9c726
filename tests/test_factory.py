"""get_norm_layer: each name builds the layer pix2pix would, and behaves like its torch twin."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import normtut
from normtut import get_norm_layer
from normtut.factory import NORM_TYPES, group_norm_groups

# name -> (normtut class, torch layer it must behave like, given C)
TWINS = {
    "batch": (
        normtut.BatchNorm2d,
        lambda C: nn.BatchNorm2d(C, affine=True, track_running_stats=True),
    ),
    "instance": (
        normtut.InstanceNorm2d,
        lambda C: nn.InstanceNorm2d(C, affine=False, track_running_stats=False),
    ),
    "layer": (normtut.GroupNorm, lambda C: nn.GroupNorm(1, C)),
    "group": (normtut.GroupNorm, lambda C: nn.GroupNorm(group_norm_groups(C), C)),
    "none": (nn.Identity, lambda C: nn.Identity()),
}


@pytest.mark.parametrize("name", sorted(TWINS))
@pytest.mark.parametrize("C", [3, 48, 64])
def test_factory_builds_the_right_layer(name, C):
    torch.manual_seed(0)
    factory = get_norm_layer(name)
    assert isinstance(factory, functools.partial)
    layer = factory(C)
    cls, twin = TWINS[name]
    assert type(layer) is cls
    ref = twin(C)
    x = torch.randn(4, C, 5, 5, dtype=torch.float64)
    for mode in ("train", "eval"):
        layer.to(torch.float64).train(mode == "train")
        ref.to(torch.float64).train(mode == "train")
        torch.testing.assert_close(layer(x), ref(x), rtol=1e-10, atol=1e-12)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ref.state_dict().items()
    }


def test_flags_as_in_pix2pix():
    bn = get_norm_layer("batch")(8)
    assert bn.affine and bn.track_running_stats and bn.running_mean is not None
    inorm = get_norm_layer("instance")(8)
    assert (
        not inorm.affine
        and not inorm.track_running_stats
        and inorm.weight is None
        and inorm.running_mean is None
    )
    ln = get_norm_layer("layer")(8)
    assert ln.num_groups == 1 and ln.num_channels == 8 and ln.affine
    assert (
        get_norm_layer("instance").func is normtut.InstanceNorm2d
    )  # pix2pix inspects .func to choose conv biases


def test_default_is_instance_like_pix2pix():
    assert get_norm_layer().func is normtut.InstanceNorm2d


@pytest.mark.parametrize(
    ("C", "G"), [(1, 1), (3, 3), (32, 32), (48, 24), (64, 32), (96, 32), (100, 25), (37, 1)]
)
def test_group_count_is_largest_divisor_at_most_32(C, G):
    assert group_norm_groups(C) == G
    layer = get_norm_layer("group")(C)
    assert layer.num_groups == G and C % layer.num_groups == 0


def test_switchable():
    layer = get_norm_layer("switchable")(16)
    assert type(layer) is normtut.SwitchableNorm2d
    assert (
        layer.num_features == 16
        and layer.using_bn
        and layer.using_moving_average
        and not layer.last_gamma
    )
    ref = nn.BatchNorm2d(16)
    x = torch.randn(4, 16, 3, 3)
    torch.testing.assert_close(layer.use_only_("bn")(x), ref(x))


def test_none_accepts_the_channel_argument():
    layer = get_norm_layer("none")(7)
    x = torch.randn(2, 7, 3, 3)
    assert layer(x) is x


@pytest.mark.parametrize("bad", ["batchnorm", "Batch", "", "sync_batch"])
def test_unknown_name_raises_like_pix2pix(bad):
    with pytest.raises(NotImplementedError) as err:
        get_norm_layer(bad)
    message = str(err.value)
    assert f"[{bad}]" in message
    for name in NORM_TYPES:
        assert name in message
