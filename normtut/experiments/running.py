"""Watching a BN layer's running statistics move, batch by batch."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def running_stats_history(layer: nn.Module, batches: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
    """``layer``'s running_mean and running_var after each of ``batches``, fed in training mode.

    Both results have shape [T + 1, C]: row 0 is the state before the first batch.
    Works for any BatchNorm-like layer with running buffers (torch's or normtut's).
    """
    layer.train()
    means, variances = [layer.running_mean.clone()], [layer.running_var.clone()]
    for x in batches:
        layer(x)
        means.append(layer.running_mean.clone())
        variances.append(layer.running_var.clone())
    return torch.stack(means), torch.stack(variances)
