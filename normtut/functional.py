"""The math of every normalization layer, written from tensor primitives.

Every layer here is the same three steps:

1. moments: the mean and the (biased) variance over a chosen set of axes,
2. standardize: x_hat = (x - mean) / sqrt(var + eps),
3. affine: y = x_hat * weight + bias.

Only the axes differ. For an input of shape [N, C, H, W]::

    batch_norm     axes (N, H, W)       one mean per channel
    instance_norm  axes (H, W)          one mean per sample and channel
    layer_norm     the last k axes      one mean per sample (e.g. C, H, W)
    group_norm     (C/G, H, W)          one mean per sample and group of channels

The signatures and error types are those of ``torch.nn.functional``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import checks

# ---------------------------------------------------------------------------
# The one place where statistics are computed.
# ---------------------------------------------------------------------------


def moments(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of ``x`` over ``dims`` (kept as size-1 axes).

    Two passes: subtract the mean first, then average the squares. The one-pass
    formula E[x^2] - E[x]^2 cancels catastrophically when ``|mean| >> std``. The mean gets
    one correction step: summing n values near 1000 in float32 leaves a rounding error
    that is large next to a std of 0.01.
    """
    mean = x.mean(dim=tuple(dims), keepdim=True)  # mu = 1/n sum x
    # mu += 1/n sum (x - mu): zero but for rounding
    mean = mean + (x - mean).mean(dim=tuple(dims), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=tuple(dims), keepdim=True)  # s2 = 1/n sum (x - mu)^2
    return mean, var


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
    """Batch normalization: statistics per channel over ``(N, *spatial)``.

    In training the batch statistics normalize and, if given, the running buffers are
    updated in place (the running variance with the unbiased batch variance). In eval the
    running buffers normalize. Same signature and semantics as ``F.batch_norm``.
    """
    checks.batch_norm_args(input, running_mean, running_var, weight, bias, training, eps)
    if input.numel() == 0:  # as in torch: an empty copy comes back, the buffers stay
        out = input.clone() if weight is None else input * weight[0]  # [0]: keeps the graph
        return out if bias is None else out + bias[0]
    C = input.shape[1]
    dtype = checks.compute_dtype("batch_norm", input, running_mean, running_var, weight, bias)
    x = input.to(dtype)
    shape = _channel_shape(input)

    if training:
        dims = [0, *range(2, x.dim())]  # BN: every axis except the channel axis
        mean, var = moments(x, dims)  # [1, C, 1, 1]
        n = x.numel() // C  # values per channel (> 0: empty inputs returned above)
        if running_mean is not None and running_var is not None:
            update_running(running_mean, mean, momentum)
            update_running(running_var, unbiased(var, n), momentum)  # running var is unbiased
    else:
        mean, var = running_mean.to(dtype).reshape(shape), running_var.to(dtype).reshape(shape)

    y = standardize(x, mean, var, eps)
    return affine(y, _cast(weight, dtype), _cast(bias, dtype), shape).to(input.dtype)


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
    C = input.shape[1]
    # Like torch, the running buffers may have any floating dtype here; weight and bias may not.
    dtype = checks.compute_dtype("instance_norm", input, weight, bias)
    x = input.to(dtype)
    shape = _channel_shape(input)

    if use_input_stats:
        dims = range(2, x.dim())  # IN: the spatial axes of each (sample, channel)
        mean, var = moments(x, dims)  # [N, C, 1, 1]
        n = x[0, 0].numel() if x.shape[0] * C > 0 else 0  # values per instance
        # As in torch, an empty batch (N = 0) averages no instances and leaves NaN buffers;
        # other empty inputs (C = 0 or no spatial values) leave them as they are.
        if running_mean is not None and (n > 0 or x.shape[0] == 0):
            update_running(running_mean, mean.mean(dim=0), momentum)  # average over the batch
            update_running(running_var, unbiased(var, n).mean(dim=0), momentum)
    else:
        mean, var = running_mean.to(dtype).reshape(shape), running_var.to(dtype).reshape(shape)

    y = standardize(x, mean, var, eps)
    return affine(y, _cast(weight, dtype), _cast(bias, dtype), shape).to(input.dtype)


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
    k = len(normalized_shape)
    dtype = checks.compute_dtype("layer_norm", input, weight, bias)
    x = input.to(dtype)

    dims = range(x.dim() - k, x.dim())  # LN: the trailing normalized_shape axes
    mean, var = moments(x, dims)
    y = standardize(x, mean, var, eps)
    return affine(y, _cast(weight, dtype), _cast(bias, dtype), normalized_shape).to(input.dtype)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalization: statistics per sample and group over ``(C/G, *spatial)``.

    The C channels are split into ``num_groups`` groups of C/G consecutive channels;
    ``weight`` and ``bias`` are per channel.
    """
    checks.group_norm_args(input, num_groups, weight, bias)
    N, C = input.shape[:2]
    dtype = checks.compute_dtype("group_norm", input, weight, bias)
    x = input.to(dtype)

    grouped = x.reshape(N, num_groups, C // num_groups, *x.shape[2:])  # [N, G, C/G, *spatial]
    mean, var = moments(grouped, range(2, grouped.dim()))  # GN: (C/G, *spatial) in each group
    y = standardize(grouped, mean, var, eps).reshape(x.shape)
    return affine(y, _cast(weight, dtype), _cast(bias, dtype), _channel_shape(input)).to(
        input.dtype
    )


def _channel_shape(input: Tensor) -> tuple[int, ...]:
    """[1, C, 1, 1, ...]: the shape a per-channel vector takes to broadcast over ``input``."""
    return (1, input.shape[1]) + (1,) * (input.dim() - 2)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)
