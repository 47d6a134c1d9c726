"""The math of every normalization layer, written from tensor primitives.

Every layer here is the same three steps:

1. moments: the mean and the (biased) variance over a chosen set of axes,
2. normalize: x_hat = (x - mean) / sqrt(var + eps),
3. affine: y = x_hat * weight + bias.

Only the axes differ. For an input of shape [N, C, H, W]:

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

# ---------------------------------------------------------------------------
# The one place where statistics are computed.
# ---------------------------------------------------------------------------


def moments(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of ``x`` over ``dims`` (kept as size-1 axes).

    Two passes: subtract the mean first, then average the squares. The one-pass
    formula E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std.
    """
    mean = x.mean(dim=tuple(dims), keepdim=True)  # mu = 1/n sum x
    var = ((x - mean) ** 2).mean(dim=tuple(dims), keepdim=True)  # s2 = 1/n sum (x - mu)^2
    return mean, var


def normalize(x: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    """x_hat = (x - mean) / sqrt(var + eps)."""
    return (x - mean) / torch.sqrt(var + eps)


def affine(x_hat: Tensor, weight: Tensor | None, bias: Tensor | None, shape: Sequence[int]) -> Tensor:
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
    """
    running.mul_(1.0 - momentum).add_(batch_stat.reshape(running.shape).to(running.dtype), alpha=momentum)


def unbiased(var: Tensor, n: int) -> Tensor:
    """Bessel's correction: turn the biased variance of n values into the unbiased one."""
    return var * n / (n - 1)


# ---------------------------------------------------------------------------
# Input checks, with the exception types torch raises.
# ---------------------------------------------------------------------------


def _verify_batch_size(size: Sequence[int]) -> None:
    values_per_channel = size[0]
    for s in size[2:]:
        values_per_channel *= s
    if values_per_channel == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def _verify_spatial_size(size: Sequence[int]) -> None:
    spatial = 1
    for s in size[2:]:
        spatial *= s
    if spatial == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {size}")


def _check_length(name: str, t: Tensor | None, expected: int, what: str = "channel") -> None:
    if t is not None and t.numel() != expected:
        raise RuntimeError(f"{name} should contain {expected} elements (one per {what}), not {t.numel()}")


def _compute_dtype(fn: str, input: Tensor, *others: Tensor | None) -> torch.dtype:
    """The dtype the math runs in: float32 for half/bfloat16 inputs, else the input's own.

    Like torch on the CPU, parameters and buffers must share the input's dtype, except
    that float32 ones are accepted beside a float16/bfloat16 input.
    """
    if not input.is_floating_point():
        raise NotImplementedError(f'"{fn}" not implemented for {input.dtype}: the input must be a floating-point tensor')
    low_precision = input.dtype in (torch.float16, torch.bfloat16)
    for t in others:
        if t is not None and t.dtype != input.dtype and not (low_precision and t.dtype == torch.float32):
            raise RuntimeError(
                f"{fn}: mixed dtypes: the input is {input.dtype} but a parameter or buffer is {t.dtype}; "
                "convert the module with .to(dtype) or the input to match"
            )
    return torch.float32 if low_precision else input.dtype


def _check_eps(fn: str, eps: float, training: bool) -> None:
    if training and eps <= 0.0:
        raise ValueError(f"{fn} eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"{fn} eps must be non-negative, but got {eps}")


def _channel_shape(input: Tensor) -> tuple[int, ...]:
    """[1, C, 1, 1, ...]: the shape a per-channel vector takes to broadcast over ``input``."""
    return (1, input.shape[1]) + (1,) * (input.dim() - 2)


def _require_channels(fn: str, input: Tensor) -> None:
    if input.dim() < 2:
        raise IndexError(f"{fn} expects an input of shape (N, C, *), got a {input.dim()}-D tensor of shape {list(input.shape)}")


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
    _require_channels("batch_norm", input)
    if training:
        _verify_batch_size(input.shape)
    _check_eps("batch_norm", eps, training)
    C = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        _check_length(name, t, C)
    if not training:
        if running_mean is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        if running_var is None:
            raise RuntimeError("running_var must be defined in evaluation mode")
    dtype = _compute_dtype("batch_norm", input, running_mean, running_var, weight, bias)
    x = input.to(dtype)
    shape = _channel_shape(input)

    if training:
        dims = [0, *range(2, x.dim())]  # BN: every axis except the channel axis
        mean, var = moments(x, dims)  # [1, C, 1, 1]
        n = x.numel() // C  # values per channel
        if n > 0:  # an empty batch leaves the buffers as they are
            if running_mean is not None:
                update_running(running_mean, mean, momentum)
            if running_var is not None:
                update_running(running_var, unbiased(var, n), momentum)  # running var is unbiased
    else:
        mean, var = running_mean.to(dtype).reshape(shape), running_var.to(dtype).reshape(shape)

    y = normalize(x, mean, var, eps)
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
    _require_channels("instance_norm", input)
    if use_input_stats:
        _verify_spatial_size(input.shape)
    C = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        _check_length(name, t, C)
    dtype = _compute_dtype("instance_norm", input, running_mean, running_var, weight, bias)
    x = input.to(dtype)
    shape = _channel_shape(input)

    if use_input_stats:
        dims = range(2, x.dim())  # IN: the spatial axes of each (sample, channel)
        mean, var = moments(x, dims)  # [N, C, 1, 1]
        n = x[0, 0].numel() if x.shape[0] * C > 0 else 0  # values per instance
        if n > 0 and running_mean is not None and running_var is not None:
            update_running(running_mean, mean.mean(dim=0), momentum)  # average over the batch
            update_running(running_var, unbiased(var, n).mean(dim=0), momentum)
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("Expected running_mean and running_var to be defined when use_input_stats is false")
        mean, var = running_mean.to(dtype).reshape(shape), running_var.to(dtype).reshape(shape)

    y = normalize(x, mean, var, eps)
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
    k = len(normalized_shape)
    if k == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, "
            "but got normalized_shape = []"
        )
    if list(input.shape[input.dim() - k :]) != normalized_shape or input.dim() < k:
        raise RuntimeError(
            f"Given normalized_shape={normalized_shape}, expected input with shape [*, "
            f"{', '.join(map(str, normalized_shape))}], but got input of size{list(input.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and list(t.shape) != normalized_shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                f"{list(t.shape)} and normalized_shape = {normalized_shape}"
            )
    dtype = _compute_dtype("layer_norm", input, weight, bias)
    x = input.to(dtype)

    dims = range(x.dim() - k, x.dim())  # LN: the trailing normalized_shape axes
    mean, var = moments(x, dims)
    y = normalize(x, mean, var, eps)
    return affine(y, _cast(weight, dtype), _cast(bias, dtype), normalized_shape).to(input.dtype)


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
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    N, C = input.shape[:2]
    _verify_batch_size([N * C // num_groups, num_groups, *input.shape[2:]])
    if C % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, but got input of shape "
            f"{list(input.shape)} and num_groups={num_groups}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.numel() != C):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels in input, but got "
                f"{name} of shape {list(t.shape)} and input of shape {list(input.shape)}"
            )
    dtype = _compute_dtype("group_norm", input, weight, bias)
    x = input.to(dtype)

    grouped = x.reshape(N, num_groups, C // num_groups, *x.shape[2:])  # [N, G, C/G, *spatial]
    mean, var = moments(grouped, range(2, grouped.dim()))  # GN: (C/G, *spatial) in each group
    y = normalize(grouped, mean, var, eps).reshape(x.shape)
    return affine(y, _cast(weight, dtype), _cast(bias, dtype), _channel_shape(input)).to(input.dtype)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)
