"""The state a normalization layer carries: affine parameters and running-statistic buffers.

Parameters are learned by the optimizer; buffers are not, but like parameters they are
saved in ``state_dict`` and moved by ``.to()``. Registering a name as ``None`` keeps it an
attribute (``layer.bias is None``) without putting it in ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def register_affine(
    module: nn.Module, shape: int | Sequence[int], affine: bool, bias: bool, **factory
) -> None:
    """``weight`` (gamma) and ``bias`` (beta) as Parameters of ``shape``, or None where disabled."""
    module.register_parameter(
        "weight", nn.Parameter(torch.empty(shape, **factory)) if affine else None
    )
    module.register_parameter(
        "bias", nn.Parameter(torch.empty(shape, **factory)) if affine and bias else None
    )


def reset_affine(module: nn.Module, gamma: float = 1.0) -> None:
    """weight <- gamma (1: the identity map), bias <- 0 if there is one.

    Called only when the layer is affine. Like torch, a missing weight then raises
    (AttributeError), e.g. after ``affine`` was set to True on a layer built without it.
    """
    nn.init.constant_(module.weight, gamma)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def register_running_stats(
    module: nn.Module, num_features: int, track: bool, device=None, dtype=None
) -> None:
    """Register ``running_mean``, ``running_var`` (per channel) and ``num_batches_tracked``.

    All three are None if not ``track``.
    """
    if track:
        module.register_buffer(
            "running_mean", torch.zeros(num_features, device=device, dtype=dtype)
        )
        module.register_buffer("running_var", torch.ones(num_features, device=device, dtype=dtype))
        module.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )
    else:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            module.register_buffer(name, None)


def reset_running(module: nn.Module) -> None:
    """running_mean <- 0, running_var <- 1, num_batches_tracked <- 0: no batch seen yet."""
    module.running_mean.zero_()
    module.running_var.fill_(1)
    module.num_batches_tracked.zero_()
