"""SyncBatchNorm: BatchNorm whose statistics span the batches of all processes in a group.

A drop-in for ``torch.nn.SyncBatchNorm`` that also runs on the CPU (gloo). In training under
a process group of several ranks, every rank computes the count, mean and sum of squared
deviations M2 of its own slice per channel (``functional.partial_moments``); the ranks
exchange them (all_gather: counts may differ) and merge them exactly
(``functional.merge_moments``). The global mean and biased variance normalize, the global
mean and unbiased variance update the running buffers. The backward all-reduces the two
per-channel sums of the BatchNorm backward (``autograd.grad_sums``), so each rank's input
gradient is the single-process gradient of its slice (``autograd.grad_input``); weight and
bias gradients stay local, for DistributedDataParallel to average. Without a process group,
with one rank, or in eval it is plain BatchNorm and communicates nothing.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import autograd, checks, layout
from . import functional as F
from .batchnorm import _BatchNorm

Moments = tuple[Tensor, Tensor, Tensor]  # (count, mean, M2), per channel


class SyncBatchNorm(_BatchNorm):
    """Batch normalization over the batches of all processes of ``process_group`` together.

    Same constructor, parameters, buffers and state_dict as ``torch.nn.SyncBatchNorm``; input
    of shape ``(N, C, *)``. ``process_group=None`` synchronizes across the whole world. Unlike
    torch's, CPU tensors under a process group (gloo) are synchronized instead of refused.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Tensor) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)

        # How much the new batch weighs in the running estimates (as in _BatchNorm).
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is None:  # torch's SyncBatchNorm asserts this
                raise AssertionError("num_batches_tracked must not be None")
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average: the k-th batch weighs 1/k
                factor = 1.0 / float(self.num_batches_tracked)

        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        pass_buffers = not self.training or self.track_running_stats
        running_mean = self.running_mean if pass_buffers else None
        running_var = self.running_var if pass_buffers else None

        group = self._group_to_sync() if self.training else None  # eval: never synchronize
        if group is None:  # plain BatchNorm: nobody to share statistics with
            return F.batch_norm(
                input,
                running_mean,
                running_var,
                self.weight,
                self.bias,
                use_batch_stats,
                factor,
                self.eps,
            )
        return sync_batch_norm(
            input, running_mean, running_var, self.weight, self.bias, factor, self.eps, group
        )

    def _group_to_sync(self) -> Any | None:
        """The process group to synchronize with, or None without one or with a single rank."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any | None = None):
        """Replace every BatchNorm1d/2d/3d in ``module`` (torch's or normtut's) by SyncBatchNorm.

        The new layers take over the old ones' Parameter objects and buffers (so their dtype,
        device and ``requires_grad``), settings and training flag, as torch's does. Returns
        ``module`` with its layers replaced, or a new layer if ``module`` is a BatchNorm.
        """
        module_output = module
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, _BatchNorm)):
            module_output = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                bias=module.bias is not None,
            )
            if module.affine:
                with torch.no_grad():
                    module_output.weight = module.weight
                    module_output.bias = module.bias
            module_output.running_mean = module.running_mean
            module_output.running_var = module.running_var
            module_output.num_batches_tracked = module.num_batches_tracked
            module_output.training = module.training
            if hasattr(module, "qconfig"):
                module_output.qconfig = module.qconfig
        for name, child in module.named_children():
            module_output.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return module_output


def sync_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
    group: Any,
) -> Tensor:
    """Training-mode batch_norm with statistics over the inputs of every rank of ``group``.

    Every rank must call it (a rank with an empty batch too): it exchanges the statistics in
    the forward and two sums per channel in the backward.
    """
    # F.batch_norm's checks, except the batch size: only the global count must exceed 1
    checks.batch_norm_args(
        input, running_mean, running_var, weight, bias, True, eps, momentum,
        check_batch_size=False,
    )  # fmt: skip
    dtype = checks.compute_dtype("batch_norm", input, running_mean, running_var, weight, bias)
    x = input.contiguous(memory_format=layout.batch_norm_format(input))  # as torch's kernel
    shape = F._channel_shape(x)  # per channel, to broadcast over x
    weight, bias = [None if t is None else t.to(dtype).reshape(shape) for t in (weight, bias)]
    return SyncNormalize.apply(x, weight, bias, running_mean, running_var, eps, momentum, group)


def global_moments(x: Tensor, dims: tuple[int, ...], group: Any) -> Moments:
    """(count, mean, M2) over ``dims`` of the inputs of all ranks of ``group`` together.

    Each rank sends its own 2C + 1 numbers and receives everybody's; every rank merges them
    in rank order, so all ranks hold the same bits. A rank without samples sends zeros.
    """
    n, mean, m2 = F.partial_moments(x, dims)  # this rank's slice
    if n == 0:  # the moments of nothing are NaN; a count of 0 makes them drop out
        mean, m2 = torch.zeros_like(mean), torch.zeros_like(m2)
    mine = torch.cat([mean.new_full((1,), n), mean.flatten(), m2.flatten()]).double()
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, mine, group)  # [count, mean_1..C, M2_1..C] from each rank
    C = mean.numel()
    parts = [(s[:1], s[1 : C + 1], s[C + 1 :]) for s in everyone if s[0] > 0]
    if not parts:  # no rank has a sample
        return mine[:1] * 0, mine[1 : C + 1] * 0, mine[C + 1 :] * 0
    return functools.reduce(F.merge_moments, parts)  # Chan, Golub & LeVeque, pair by pair


class SyncNormalize(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with statistics of all ranks' batches.

    ``weight`` and ``bias`` come viewed as [1, C, 1, ...] in the compute dtype; the running
    buffers (or None) are updated in place with the global mean and unbiased variance.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        xf = x.to(F._opmath(x.dtype))  # float16/bfloat16: the math in float32
        dims = (0, *range(2, x.dim()))  # BN: every axis but the channels
        shape = F._channel_shape(x)
        n, mean, m2 = global_moments(xf, dims, group)
        n = int(n.item())
        if n == 1:  # as BatchNorm on the whole batch; every rank knows n, every rank raises
            raise ValueError(
                "Expected more than 1 value per channel when training, got 1 value per "
                "channel across all processes"
            )
        var = m2 / max(n, 1)  # biased: what normalizes
        if running_mean is not None and n > 0:
            F.update_running(running_mean, mean, momentum)
            F.update_running(running_var, F.unbiased(var, n), momentum)
        mean, var = mean.to(xf.dtype).reshape(shape), var.to(xf.dtype).reshape(shape)
        rstd = torch.rsqrt(var + eps)  # 1 / sigma per channel
        y = F.affine((xf - mean) * rstd, weight, bias, shape)  # x_hat * weight + bias
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.n, ctx.group = n, group
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        xf = x.to(mean.dtype)
        dy = layout.like(dy.to(mean.dtype), xf)  # dx in the input's memory layout
        xc = xf - mean  # x_hat = xc * rstd
        sum_dy, sum_dy_xc = autograd.grad_sums(dy, xc, mean.shape)  # this rank's sums
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:  # dx needs both sums over the whole batch
            both = torch.cat([sum_dy, sum_dy_xc])  # [2, C, 1, ...]: 2C numbers
            dist.all_reduce(both, group=ctx.group)
            sum_g, sum_g_xc = (autograd.group_sum(t, weight, rstd.shape) for t in both.chunk(2))
            dx = autograd.grad_input(dy, xc, rstd, weight, sum_g, sum_g_xc, ctx.n)
            dx = dx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            dweight = sum_dy_xc * rstd  # sum dy * x_hat over this rank's slice
        if ctx.needs_input_grad[2]:
            dbias = sum_dy  # sum dy over this rank's slice
        return dx, dweight, dbias, None, None, None, None, None
