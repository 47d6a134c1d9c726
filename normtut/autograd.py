"""The backward pass of every normalization layer, derived by hand (chapter 9).

``Normalize`` is one ``torch.autograd.Function`` for BatchNorm, InstanceNorm, LayerNorm and
GroupNorm. A layer says over which axes its statistics are taken (``Norm.dims``, as for
``functional.moments``); the forward computes them and normalizes, and the backward is the
derived formula instead of autograd's walk through every primitive. With
x_hat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps), g = weight * dy and means over a group:

    dL/dbias   = sum dy                     dL/dweight = sum dy * x_hat
    dL/dx      = rstd * (g - mean(g) - x_hat * mean(g * x_hat))      (training)
    dL/dx      = rstd * g                                             (eval)

Only the input and the per-group statistics are kept for backward, as in torch's kernels.
The formula takes three steps: ``grad_sums`` (the two reductions), ``group_sum`` (the
weight brought in, one sum per group) and ``grad_input``. A distributed BatchNorm adds up
``grad_sums`` over its processes before the other two.

Every operation reads and writes whole tensors, so the code counts them: each new
input-sized tensor costs a trip through memory (and, freshly allocated, page faults). Where
autograd records nothing, the forward writes the output into its temporary x - K, and the
backward uses one buffer, which holds x - mean, then dy * (x - mean), then dL/dx. (The
sums of squares of x - K are dot products where they can be: ``functional.square_mean``.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch._functorch import utils as _functorch_utils

from . import functional as F
from . import layout


@dataclass(frozen=True)
class Norm:
    """What a layer passes to ``Normalize``: its axes and settings (not tensors)."""

    dims: tuple[int, ...]  # the axes one group of statistics spans, e.g. (0, 2, 3) for BN2d
    eps: float
    training: bool = True  # statistics of the input (else running_mean and running_var)
    momentum: float = 0.0  # how much this batch weighs in the running statistics
    # torch's batch_norm kernel (BN, IN) defines 1/sigma = 0 for batch statistics with
    # var + eps == 0, so a constant group becomes beta; elsewhere 1/0 = inf (NaN outputs).
    zero_rstd_if_constant: bool = False
    # The shape weight and bias are viewed as to broadcast against x, e.g. (1, C, 1, 1) for
    # BN2d (None: they come viewed). Viewed inside the Function, autograd records no view.
    affine_shape: tuple[int, ...] | None = None


def inverse_std(var: Tensor, norm: Norm) -> Tensor:
    """rstd = 1 / sqrt(var + eps), or 0 for a constant group where ``norm`` says so."""
    rstd = torch.rsqrt(var + norm.eps)
    if norm.zero_rstd_if_constant and norm.training and norm.eps == 0:  # var >= 0: eps = 0 only
        rstd = torch.where(var == 0, 0.0, rstd)
    return rstd


# ---------------------------------------------------------------------------
# The backward formula, in two halves.
# ---------------------------------------------------------------------------


def grad_sums(
    dy: Tensor, xc: Tensor, shape: Sequence[int], out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The two reductions of a norm's backward: sum dy and sum dy * xc, xc = x - mean.

    Summed to ``shape``: anything from one value per group to one per element. The
    backward sums over the axes on which both the statistics and the weight are
    constant; sum dy * x_hat is then rstd * sum dy * xc (rstd is constant on a group).
    dy * xc is formed in a new tensor, or in ``out`` (``xc`` itself, if not needed again).
    """
    return _sum_to(dy, shape), _sum_to(torch.mul(dy, xc, out=out), shape)


def grad_input(
    dy: Tensor,
    xc: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    sum_g: Tensor,
    sum_g_xc: Tensor,
    n: int,
    out: Tensor | None = None,
) -> Tensor:
    """dL/dx, training: rstd * (g - mean(g) - x_hat * mean(g * x_hat)), g = weight * dy.

    ``xc`` is x - mean (so x_hat = xc * rstd), ``sum_g`` and ``sum_g_xc`` are the sums of g
    and g * xc over each group (``group_sum`` of what ``grad_sums`` returns), and ``n``
    values form one group. With a weight per channel the formula is dL/dx = a * dy + c * xc
    + b, where a = rstd * weight, b = -rstd * mean(g) and c = -rstd^3 * mean(g * xc) are
    small: they are formed first, then three passes over the data. dL/dx is a new tensor,
    or ``out`` (which may be ``xc`` itself, where x - mean is not needed afterwards).
    """
    inv_n = 1 / n if n else math.nan  # (n = 0: empty groups, an empty dL/dx)
    # x_hat * mean(g * x_hat) = xc * rstd^2 * mean(g * xc)
    if weight is not None and weight.dim() < dy.dim():  # LN: rstd * (weight * dy - ...)
        c = (sum_g_xc * -inv_n).mul_(rstd).mul_(rstd)  # -rstd^2 * mean(g * xc)
        dx = torch.mul(xc, c, out=out).addcmul_(dy, weight)
        return dx.sub_(sum_g * inv_n).mul_(rstd)
    # BN, IN, GN: a weight per channel, so a = rstd * weight is small
    r_n = rstd * -inv_n
    c = (sum_g_xc * r_n).mul_(rstd).mul_(rstd)  # -rstd^3 * mean(g * xc)
    b = sum_g * r_n  # -rstd * mean(g)
    dx = torch.mul(xc, c, out=out).addcmul_(dy, _times(rstd, weight))
    return dx.add_(b)


def grad_weight(sum_dy_xc: Tensor, rstd: Tensor, shape: Sequence[int]) -> Tensor:
    """dL/dweight = sum dy * x_hat = sum rstd * dy * (x - mean), to the weight's ``shape``.

    With a weight per element (LayerNorm) this is a vector-matrix product over the samples.
    """
    k = len(shape)
    if rstd.shape[rstd.dim() - k :] == (1,) * k and sum_dy_xc.shape == rstd.shape[:-k] + shape:
        return (rstd.reshape(-1) @ sum_dy_xc.reshape(rstd.numel(), math.prod(shape))).reshape(shape)
    return _sum_to(rstd * sum_dy_xc, shape)


def group_sum(t: Tensor, weight: Tensor | None, shape: Sequence[int]) -> Tensor:
    """sum of weight * t over each group, to ``shape`` (``t`` from ``grad_sums``): with
    ``sum_dy`` that is the sum of g = weight * dy, with ``sum_dy_xc`` the sum of g * xc.

    With a weight per element (LayerNorm) it is a matrix-vector product over each group.
    """
    if weight is None:
        return _sum_to(t, shape)
    k = weight.dim()
    groups = t.shape[: t.dim() - k]
    if t.shape[t.dim() - k :] == weight.shape and tuple(shape) == groups + (1,) * k:
        rows = t.reshape(*groups, weight.numel())  # LN: one row per group
        return (rows @ weight.reshape(-1)).reshape(shape)
    return _sum_to(weight * t, shape)


def scaled(t: Tensor, rstd: Tensor, weight: Tensor | None, out: Tensor | None = None) -> Tensor:
    """t * rstd * weight (no weight: 1), with one full-size product only, new or in ``out``.

    A per-channel weight (viewed with as many axes as t) is multiplied into rstd first.
    """
    if weight is None or weight.dim() == t.dim():  # BN, IN, GN: rstd * weight is small
        return torch.mul(t, _times(rstd, weight), out=out)
    return torch.mul(t, rstd, out=out).mul_(weight)  # LN: one weight per element


def _sum_to(t: Tensor, shape: Sequence[int]) -> Tensor:
    """``t.sum_to_size(shape)``, skipping the call where ``t`` has that shape already."""
    return t if t.shape == tuple(shape) else t.sum_to_size(shape)


def _times(rstd: Tensor, weight: Tensor | None) -> Tensor:
    """rstd * weight, or rstd where there is no weight."""
    return rstd if weight is None else rstd * weight


# ---------------------------------------------------------------------------
# The Function every layer calls.
# ---------------------------------------------------------------------------


class Normalize(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, with the derived backward.

    ``Normalize.apply(x, weight, bias, running_mean, running_var, norm)`` returns
    ``(y, mean, rstd)`` like torch's ``native_batch_norm``; ``weight`` and ``bias`` come in
    x's compute dtype (float32 at least) and are viewed as ``norm.affine_shape``; the running
    buffers are per channel (channel axis 1), updated in training and used in eval.
    """

    generate_vmap_rule = True  # torch.func.vmap, jacrev, jacfwd run these methods per sample

    @staticmethod
    def forward(input, weight, bias, running_mean, running_var, norm: Norm):
        x = _in(input, F._opmath(input.dtype))  # float16/bfloat16: the math in float32
        weight, bias = _viewed(weight, norm), _viewed(bias, norm)
        plain = _plain(x)  # nothing records: our own temporaries may be overwritten
        scratch = norm.training and plain  # d too is ours (in eval it is x)
        if norm.training:  # statistics of x, from d = x - K, K near each group's mean
            n, K, d, mean_d, var = F.shifted_moments(x, norm.dims)
            mean = K + mean_d
            if running_mean is not None:
                _update_running(running_mean, running_var, mean, var, n, norm)
        else:  # the running statistics, per channel (and K = 0)
            mean, var = _per_channel(running_mean, x), _per_channel(running_var, x)
            d, mean_d = x, mean
        rstd = inverse_std(var, norm)  # 1 / sigma, one per group
        # y = weight * (x - mean) * rstd + bias = weight * (d - mean(d)) * rstd + bias,
        # written (where nothing records) into a temporary made above: the output takes no
        # input-sized tensor of its own.
        if weight is not None and weight.dim() < x.dim():  # LN: a weight per element
            x_hat = (d.sub_(mean_d) if scratch else d - mean_d).mul_(rstd)
            if not plain:
                y = x_hat * weight if bias is None else torch.addcmul(bias, x_hat, weight)
            elif bias is None:
                y = _fresh(x_hat.mul_(weight))
            else:
                y = _fresh(torch.addcmul(bias, x_hat, weight, out=x_hat))
        else:  # a weight per channel: y = d * s + (bias - mean(d) * s), s = weight * rstd
            s = _times(rstd, weight)
            shift = -mean_d * s if bias is None else torch.addcmul(bias, mean_d, s, value=-1)
            # (torch.addcmul(shift, d, s) is one pass, but with two per-channel operands it
            # runs unvectorized: two vectorized passes are faster)
            y = d.mul_(s) if scratch else d * s
            y = _fresh(y.add_(shift)) if plain else y + shift
        return _in(y, input.dtype), mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, _, _, norm = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)  # no zero gradients made for mean and rstd
        ctx.save_for_backward(input, weight, mean, rstd)  # x itself: x - mean is recomputed
        ctx.save_for_forward(input, weight, mean, rstd)
        ctx.norm, ctx.bias_shape = norm, None if bias is None else bias.shape

    @staticmethod
    def backward(ctx, dy, _dmean, _drstd):
        if dy is None:  # y was not used (set_materialize_grads(False)): no gradient
            return None, None, None, None, None, None
        input, weight_given, mean, rstd = ctx.saved_tensors
        norm = ctx.norm
        weight = _viewed(weight_given, norm)
        x = _in(input, mean.dtype)
        dy = layout.like(_in(dy, mean.dtype), x)  # dx comes back in the input's memory layout
        recording = torch.is_grad_enabled()  # create_graph: autograd records this backward
        if norm.training and recording:  # mean and rstd as functions of x, for autograd
            mean, var = F.moments(x, norm.dims)
            rstd = inverse_std(var, norm)
        dx = dweight = dbias = None
        needs_dx, needs_dweight, needs_dbias = ctx.needs_input_grad[:3]
        if not norm.training and not needs_dweight:  # eval, no dL/dweight: no sum dy * xc
            dx = scaled(dy, rstd, weight) if needs_dx else None  # a fixed scale per channel
            dbias = _bias_grad(dy, ctx) if needs_dbias else None
            return _as(dx, input), None, dbias, None, None, None
        shape = _shared_shape(mean, weight)
        xc = x - mean  # x_hat = xc * rstd
        # Where nobody else sees the temporaries, dy * xc is formed in xc's memory and, once
        # summed, x - mean computed there again for dL/dx: the backward allocates one
        # input-sized buffer, as torch's kernel does (groups of one value excepted: there
        # the sums are dy * xc itself).
        plain = _plain(dy)  # may overwrite its temporaries
        one_buffer = plain and tuple(rstd.shape) != tuple(xc.shape)
        sum_dy, sum_dy_xc = grad_sums(dy, xc, shape, out=xc if one_buffer else None)
        if needs_dweight:  # sum dy * x_hat
            dweight = grad_weight(sum_dy_xc, rstd, weight.shape).reshape(weight_given.shape)
        if needs_dbias:
            dbias = _bias_grad(sum_dy, ctx)  # sum dy
        out = xc if plain else None  # dx into the memory of xc, its last use
        if needs_dx and norm.training:
            sum_g = group_sum(sum_dy, weight, rstd.shape)  # n * mean(g) per group
            sum_g_xc = group_sum(sum_dy_xc, weight, rstd.shape)  # n * mean(g * xc)
            if one_buffer:
                torch.sub(x, mean, out=xc)  # xc = x - mean again
            n = _count(x, norm)
            dx = grad_input(dy, xc, rstd, weight, sum_g, sum_g_xc, n, out=out)
        elif needs_dx:  # eval: a fixed scale, weight * rstd per channel
            dx = scaled(dy, rstd, weight, out=out)
        return _as(dx, input), dweight, dbias, None, None, None

    @staticmethod
    def jvp(ctx, dinput, dweight, dbias, _drm, _drv, _norm):
        """Forward mode: the Jacobian of x -> x_hat is symmetric, so grad_input serves again."""
        input, weight, mean, rstd = ctx.saved_tensors
        norm = ctx.norm
        weight, dweight, dbias = (_viewed(t, norm) for t in (weight, dweight, dbias))
        x = input.to(mean.dtype)
        xc = x - mean
        dy = torch.zeros_like(xc)
        if dinput is not None:  # weight * d(x_hat), d(x_hat) = J dx with J = J^T
            dx = dinput.to(mean.dtype)
            if norm.training:
                sums = grad_sums(dx, xc, mean.shape)  # per group already (no weight)
                dx_hat = grad_input(dx, xc, rstd, None, *sums, _count(x, norm))
            else:
                dx_hat = dx * rstd
            dy = dy + (dx_hat if weight is None else dx_hat * weight)
        if dweight is not None:
            dy = dy + dweight * xc * rstd  # d(weight) * x_hat
        if dbias is not None:
            dy = dy + dbias
        return dy.to(input.dtype), None, None

    @classmethod
    def apply(cls, *args):
        """``Function.apply``, without its ``inspect`` binding of the arguments on every call
        (tens of microseconds) where no torch.func transform needs it."""
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        args = _functorch_utils.unwrap_dead_wrappers(args)  # as Function.apply does
        return super(torch.autograd.Function, cls).apply(*args)  # the C++ apply


class CompiledNormalize(Normalize):
    """``Normalize`` for ``torch.compile``, which cannot trace a Function with its own jvp
    (Dynamo's "Unsupported custom jvp"): the same forward and backward, no forward mode."""

    jvp = torch.autograd.Function.jvp


def _update_running(running_mean, running_var, mean, var, n, norm) -> None:
    """The running buffers move towards this batch's statistics, averaged per channel.

    BN has one mean per channel already; IN has one per sample and channel and averages them.
    """
    C, var = running_mean.numel(), F.unbiased(var, n)
    if mean.numel() != C:  # IN: the average over the samples (NaN for none, as torch)
        mean, var = mean.reshape(-1, C).mean(0), var.reshape(-1, C).mean(0)
    F.update_running(running_mean, mean, norm.momentum)
    F.update_running(running_var, var, norm.momentum)


def _viewed(t: Tensor | None, norm: Norm) -> Tensor | None:
    """A weight or bias (or its gradient) viewed as ``norm.affine_shape``, to broadcast."""
    return t if t is None or norm.affine_shape is None else t.reshape(norm.affine_shape)


def _bias_grad(sum_dy: Tensor, ctx) -> Tensor:
    """dL/dbias = sum dy over the axes the bias is shared on, in the bias's own shape."""
    shape = ctx.norm.affine_shape or ctx.bias_shape
    return _sum_to(sum_dy, shape).reshape(ctx.bias_shape)


def _plain(t: Tensor) -> bool:
    """Whether temporaries computed from ``t`` may be overwritten in place: autograd records
    nothing (with create_graph, or jit.trace calling forward directly, it keeps them) and
    no vmap batches other values into them (torch.func, or autograd.grad's batched grads)."""
    return not (
        F._compiled_or_transformed()
        or torch.is_grad_enabled()
        or torch._C._functorch.is_legacy_batchedtensor(t)  # autograd.grad(is_grads_batched)
    )


def _fresh(t: Tensor) -> Tensor:
    """``t``, a temporary of this forward that nobody else has seen, as a new tensor: its
    version counter back at 0, as torch's output has (in-place steps counted it up)."""
    if not torch.is_inference(t):  # (inference tensors have no version counter)
        torch._C._autograd._unsafe_set_version_counter((t,), (0,))
    return t


def _as(dx: Tensor | None, input: Tensor) -> Tensor | None:
    """dx in the input's dtype (float16/bfloat16 inputs: the math ran in float32)."""
    return dx if dx is None else _in(dx, input.dtype)


def _in(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, skipping the call where it would do nothing (most of the time)."""
    return t if t.dtype == dtype else t.to(dtype)


def _shared_shape(mean: Tensor, weight: Tensor | None) -> tuple[int, ...]:
    """The broadcast shape of the statistics and the weight: one value per (group, weight)."""
    if weight is None:
        return tuple(mean.shape)
    k = mean.dim() - weight.dim()  # weight's shape lines up with the last axes
    pairs = zip(mean.shape[k:], weight.shape, strict=True)
    return tuple(mean.shape[:k]) + tuple([w if m == 1 else m for m, w in pairs])


def _count(x: Tensor, norm: Norm) -> int:
    """n: how many values one group holds."""
    return math.prod([x.shape[d] for d in norm.dims])


def _per_channel(running: Tensor, x: Tensor) -> Tensor:
    """A per-channel buffer as [1, C, 1, ...] in x's dtype, to broadcast over x."""
    return _in(running, x.dtype).reshape((1, x.shape[1]) + (1,) * (x.dim() - 2))
