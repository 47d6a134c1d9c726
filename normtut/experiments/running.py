"""Watching a BN layer's running statistics move, batch by batch, and across processes.

``running_stats_history`` records the buffers after each batch; ``running_mean_spread``
measures how noisy the running mean is for a momentum (over many independent streams at
once), ``ema_spread`` is the formula it should follow; ``ddp_running_means`` runs a tiny
DistributedDataParallel job on the CPU and returns each process's ``running_mean``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..batchnorm import BatchNorm1d, BatchNorm2d
from .distributed import launch


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


def ema_spread(momentum: float, steps: int) -> float:
    """Std of an exponential average of independent batch means, in units of one batch mean's.

    After t batches r_t = sum_k m (1 - m)^k s_{t-k}, so var(r_t) / var(s) =
    m^2 sum_k (1 - m)^(2k) = m / (2 - m) * (1 - (1 - m)^(2t)).
    """
    return math.sqrt(momentum / (2 - momentum) * (1 - (1 - momentum) ** (2 * steps)))


@torch.no_grad()
def running_mean_spread(
    momentum: float,
    streams: int = 2000,
    steps: int = 300,
    batch: tuple[int, int, int] = (1, 4, 4),
    layer: Callable[..., nn.Module] = BatchNorm2d,
    seed: int = 0,
) -> float:
    """Measured std of ``running_mean`` after ``steps`` batches, in units of one batch mean's.

    Every channel of one ``layer(streams, momentum=momentum)`` is an independent stream:
    batches of shape (n, streams, h, w) with ``batch`` = (n, h, w), drawn from N(0, 1), so
    one batch mean has std 1 / sqrt(n h w). The spread is taken across the streams.
    """
    gen = torch.Generator().manual_seed(seed)
    bn = layer(streams, momentum=momentum).train()
    n, h, w = batch
    for _ in range(steps):
        bn(torch.randn(n, streams, h, w, generator=gen))
    return (bn.running_mean.std() * math.sqrt(n * h * w)).item()


def _ddp_worker(steps: int, sync: bool) -> float:
    """One rank: BatchNorm1d(1) inside DDP, fed batches whose mean is 10 * rank + step + 1.5."""
    rank = dist.get_rank()
    model = nn.Sequential(BatchNorm1d(1))
    ddp = nn.parallel.DistributedDataParallel(model, forward_sync_buffers=sync)
    for step in range(steps):
        x = torch.arange(4.0).reshape(4, 1) + 10 * rank + step  # mean 10 rank + step + 1.5
        ddp(x).sum().backward()
    return model[0].running_mean.item()


def ddp_running_means(world_size: int = 2, steps: int = 2, sync: bool = True) -> list[float]:
    """Each process's ``running_mean`` after ``steps`` DDP training steps (gloo, CPU).

    Process r sees batches with mean 10 r + step + 1.5. ``sync`` is DDP's
    ``forward_sync_buffers`` (formerly ``broadcast_buffers``; default True): before each
    forward the buffers of rank 0 are copied to every process. The processes are started by
    ``distributed.launch``.
    """
    return launch(_ddp_worker, world_size, steps, sync)
