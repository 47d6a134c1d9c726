"""The math of every normalization layer, written from tensor primitives.

Every layer here is the same three steps:

1. moments: the mean and the (biased) variance over a chosen set of axes,
2. standardize: x_hat = (x - mean) / sqrt(var + eps),
3. affine: y = x_hat * weight + bias.

Only the axes differ. For an input of shape [N, C, H, W]:

    batch_norm     axes (N, H, W)       one mean per channel
    instance_norm  axes (H, W)          one mean per sample and channel
    layer_norm     the last k axes      one mean per sample (e.g. C, H, W)
    group_norm     (C/G, H, W)          one mean per sample and group of channels

The four layer functions check their arguments, pick the axes and hand the steps to
``autograd.Normalize``: its forward runs them, its backward is the derived formula.
The signatures and error types are those of ``torch.nn.functional``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from . import autograd, checks, layout

# ---------------------------------------------------------------------------
# The one place where statistics are computed.
# ---------------------------------------------------------------------------


def shifted_moments(
    x: Tensor,
    dims: Sequence[int],
) -> tuple[int, Tensor, Tensor, Tensor, Tensor]:
    """One pass over the data behind every statistic: n, K, d, mean(d), M2 over dims.

    The textbook E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std.
    Subtracting first a value K near each group's mean keeps the sums small: with
    d = x - K, mean = K + mean(d) and M2 = sum (x - mean)^2 = sum d^2 - n mean(d)^2 lose
    nothing. ``d`` is returned for callers that go on to use x - mean = d - mean(d).
    """
    dims = tuple(sorted([i % x.dim() for i in dims]))
    n = math.prod([x.shape[i] for i in dims])
    K = _rough_mean(x, dims).detach()  # any K gives the same mean and M2
    d = x - K
    sum_d = d.sum(dims, keepdim=True)
    mean_d = sum_d / n
    m2 = (d * d).sum(dims, keepdim=True) - sum_d * mean_d  # sum d^2 - (sum d)^2 / n
    return n, K, d, mean_d, m2.clamp_min(0.0)  # rounding must not leave M2 below 0


def partial_moments(x: Tensor, dims: Sequence[int]) -> tuple[int, Tensor, Tensor]:
    """Count n, mean and M2 = sum of (x - mean)^2 of ``x`` over ``dims`` (kept as size-1 axes).

    What a distributed norm computes on each process and merges (``merge_moments``).
    """
    n, K, _, mean_d, m2 = shifted_moments(x, dims)
    return n, K + mean_d, m2


def merge_moments(
    a: tuple[int | Tensor, Tensor, Tensor], b: tuple[int | Tensor, Tensor, Tensor]
) -> tuple[int | Tensor, Tensor, Tensor]:
    """(n, mean, M2) of two groups together, from each group's own (Chan, Golub, LeVeque).

    The pairwise update: with delta = mean_b - mean_a, the means weigh by their counts and
    M2 gains delta^2 * n_a * n_b / n, the spread between the two groups.
    """
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    return n, mean, m2_a + m2_b + delta * delta * (n_a * n_b / n)


def moments(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of ``x`` over ``dims`` (kept as size-1 axes): var = M2 / n.

    One pass over shifted data (``shifted_moments``), as accurate as two passes.
    """
    n, mean, m2 = partial_moments(x, dims)
    return mean, m2 / n


def _rough_mean(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """K: a value near each group's mean, cheaply: the mean of a coarse grid of its values.

    At most 4 evenly spaced indices along each axis of the group (64 values of an image
    batch's channel, spread over samples, rows and columns, borders included). Infinite
    or NaN, K counts as 0: x - inf would be NaN.
    """
    grid = x
    for i in dims:
        step = max(1, -(-x.shape[i] // 4))  # ceil(size / 4)
        grid = grid[(slice(None),) * i + (slice(None, None, step),)]
    return torch.nan_to_num(grid.mean(dims, keepdim=True), nan=0.0, posinf=0.0, neginf=0.0)


def standardize(x: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    """x_hat = (x - mean) / sqrt(var + eps)."""
    return (x - mean) / torch.sqrt(var + eps)


def affine(
    x_hat: Tensor, weight: Tensor | None, bias: Tensor | None, shape: Sequence[int]
) -> Tensor:
    """y = x_hat * weight + bias, with weight and bias viewed as ``shape`` to broadcast."""
    if weight is not None:
        x_hat = x_hat * weight.reshape(shape)
    if bias is not None:
        x_hat = x_hat + bias.reshape(shape)
    return x_hat


@torch.no_grad()
def update_running(running: Tensor, batch_stat: Tensor, momentum: float) -> None:
    """In place: running <- (1 - momentum) * running + momentum * batch_stat.

    PyTorch's momentum weights the *new* batch (Keras' weights the old value).
    The sum is formed in at least float32 and rounded once into a float16/bfloat16 buffer.
    """
    acc = torch.promote_types(running.dtype, torch.float32)
    new = running.to(acc) * (1.0 - momentum) + batch_stat.reshape(running.shape).to(acc) * momentum
    running.copy_(new)


def unbiased(var: Tensor, n: int) -> Tensor:
    """Bessel's correction: turn the biased variance of n values into the unbiased one."""
    return var * n / (n - 1)


# ---------------------------------------------------------------------------
# The four layers.
# ---------------------------------------------------------------------------


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization: statistics per channel over (N, *spatial).

    In training the batch statistics normalize and, if given, the running buffers are
    updated in place (the running variance with the unbiased batch variance). In eval the
    running buffers normalize. Same signature and semantics as ``F.batch_norm``.
    """
    checks.batch_norm_args(input, running_mean, running_var, weight, bias, training, eps)
    if input.numel() == 0:  # as in torch: an empty copy comes back, the buffers stay
        out = input.clone() if weight is None else input * weight[0]  # [0]: keeps the graph
        return out if bias is None else out + bias[0]
    dtype = checks.compute_dtype("batch_norm", input, running_mean, running_var, weight, bias)
    x = input.contiguous(memory_format=layout.batch_norm_format(input))  # as torch's kernel
    dims = (0, *range(2, x.dim()))  # BN: every axis except the channel axis
    norm = autograd.Norm(dims, eps, training, momentum, zero_rstd_if_constant=True)
    return _normalize(x, weight, bias, running_mean, running_var, _channel_shape(x), dtype, norm)


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance normalization: statistics per sample and channel over the spatial axes.

    With ``use_input_stats`` the instance statistics normalize, and running buffers, if
    given, move towards their average over the batch. Otherwise the buffers normalize.
    """
    checks.instance_norm_args(input, running_mean, running_var, weight, bias, use_input_stats)
    # Like torch, the running buffers may have any floating dtype here; weight and bias may not.
    dtype = checks.compute_dtype("instance_norm", input, weight, bias)
    x = input.contiguous()  # IN answers in the contiguous layout, whatever the input's
    dims = tuple(range(2, x.dim()))  # IN: the spatial axes of each (sample, channel)
    N, C, n = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    if use_input_stats and (C == 0 or (n == 0 and N > 0)):
        # As in torch, instances without values leave the buffers as they are (while an
        # empty batch, N = 0, averages no instances and leaves NaN buffers).
        running_mean = running_var = None
    norm = autograd.Norm(dims, eps, use_input_stats, momentum, zero_rstd_if_constant=True)
    return _normalize(x, weight, bias, running_mean, running_var, _channel_shape(x), dtype, norm)


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalization: statistics per sample over the last ``len(normalized_shape)`` axes.

    ``weight`` and ``bias`` have the shape ``normalized_shape``: one value per element.
    """
    normalized_shape = list(normalized_shape)
    checks.layer_norm_args(input, normalized_shape, weight, bias)
    dtype = checks.compute_dtype("layer_norm", input, weight, bias)
    x = input.contiguous()  # LN answers in the contiguous layout, whatever the input's
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))  # LN: the trailing axes
    norm = autograd.Norm(dims, eps)
    return _normalize(x, weight, bias, None, None, normalized_shape, dtype, norm)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalization: statistics per sample and group over (C/G, *spatial).

    The C channels are split into ``num_groups`` groups of C/G consecutive channels;
    ``weight`` and ``bias`` are per channel.
    """
    checks.group_norm_args(input, num_groups, weight, bias)
    N, C, G = input.shape[0], input.shape[1], num_groups
    dtype = checks.compute_dtype("group_norm", input, weight, bias)
    x = input.contiguous(memory_format=layout.suggest_memory_format(input))  # as torch's
    grouped = x.reshape(N, G, C // G, *x.shape[2:])  # [N, G, C/G, *spatial], a view
    dims = tuple(range(2, grouped.dim()))  # GN: (C/G, *spatial) in each group
    shape = (1, G, C // G) + (1,) * (x.dim() - 2)  # the per-channel affine, grouped likewise
    y = _normalize(grouped, weight, bias, None, None, shape, dtype, autograd.Norm(dims, eps))
    return y.reshape(x.shape)


def _normalize(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    shape: Sequence[int],
    dtype: torch.dtype,
    norm: autograd.Norm,
) -> Tensor:
    """``autograd.Normalize`` with weight and bias cast to ``dtype`` and viewed as ``shape``."""
    weight, bias = [None if t is None else t.to(dtype).reshape(shape) for t in (weight, bias)]
    args = (x, weight, bias, running_mean, running_var, norm)
    if torch.jit.is_tracing():  # a graph of aten ops that runs (and saves) without Python
        return autograd.Normalize.forward(*args)[0]
    if torch.compiler.is_compiling():  # Dynamo traces the Function, but not its jvp
        return autograd.CompiledNormalize.apply(*args)[0]
    return autograd.Normalize.apply(*args)[0]


def _channel_shape(input: Tensor) -> tuple[int, ...]:
    """[1, C, 1, 1, ...]: the shape a per-channel vector takes to broadcast over ``input``."""
    return (1, input.shape[1]) + (1,) * (input.dim() - 2)
