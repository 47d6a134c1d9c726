"""get_norm_layer: pix2pix's helper that turns a name into a norm-layer factory, extended.

pix2pix (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py) builds its networks
with ``norm_layer(num_channels)``; this helper picks the class once. Every factory is a
``functools.partial``, so callers can inspect ``factory.func`` as pix2pix does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from .batchnorm import BatchNorm2d
from .groupnorm import GroupNorm
from .instancenorm import InstanceNorm2d
from .switchnorm import SwitchableNorm2d

NORM_TYPES = ("batch", "instance", "layer", "group", "switchable", "none")


def group_norm_groups(num_channels: int, max_groups: int = 32) -> int:
    """The largest divisor of ``num_channels`` that is at most ``max_groups``.

    With the default ``max_groups``, that is 32 whenever C is a multiple of 32.
    """
    return max(g for g in range(1, min(max_groups, num_channels) + 1) if num_channels % g == 0)


def group_norm_layer(num_channels: int, max_groups: int = 32) -> GroupNorm:
    """GroupNorm with ``group_norm_groups(num_channels, max_groups)`` groups."""
    return GroupNorm(group_norm_groups(num_channels, max_groups), num_channels)


def get_norm_layer(norm_type: str = "instance") -> Callable[[int], nn.Module]:
    """Return a factory ``num_channels -> norm layer`` for 4-D (N, C, H, W) feature maps.

    'batch'      BatchNorm2d(C, affine=True, track_running_stats=True)
    'instance'   InstanceNorm2d(C, affine=False, track_running_stats=False)
    'layer'      GroupNorm(1, C): statistics over (C, H, W) without knowing H, W; per-channel affine
    'group'      GroupNorm(G, C), G the largest divisor of C that is at most 32
    'switchable' SwitchableNorm2d(C)
    'none'       nn.Identity (ignores C)

    An unknown name raises NotImplementedError, as pix2pix's helper does.
    """
    if norm_type == "batch":
        return functools.partial(BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(InstanceNorm2d, affine=False, track_running_stats=False)
    if norm_type == "layer":
        return functools.partial(GroupNorm, 1)
    if norm_type == "group":
        return functools.partial(group_norm_layer, max_groups=32)
    if norm_type == "switchable":
        return functools.partial(SwitchableNorm2d)
    if norm_type == "none":
        return functools.partial(nn.Identity)  # nn.Identity(*args) accepts and ignores C
    raise NotImplementedError(
        f"normalization layer [{norm_type}] is not found; valid names: {', '.join(NORM_TYPES)}"
    )
