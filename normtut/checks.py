"""Argument checks for normtut.functional, raising the exception types torch raises.

Kept apart from the math so that each function in functional.py reads as the algorithm.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor


def verify_batch_size(size: Sequence[int]) -> None:
    values_per_channel = size[0]
    for s in size[2:]:
        values_per_channel *= s
    if values_per_channel == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {size}"
        )


def verify_spatial_size(size: Sequence[int]) -> None:
    spatial = 1
    for s in size[2:]:
        spatial *= s
    if spatial == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {size}"
        )


def per_channel(C: int, **tensors: Tensor | None) -> None:
    """Each tensor given (None aside) must hold C values, one per channel: else RuntimeError."""
    for name, t in tensors.items():
        if t is not None and t.numel() != C:
            raise RuntimeError(
                f"{name} should contain {C} elements (one per channel), not {t.numel()}"
            )


def compute_dtype(fn: str, input: Tensor, *others: Tensor | None) -> torch.dtype:
    """The dtype the math runs in: float32 for half/bfloat16 inputs, else the input's own.

    Like torch on the CPU, parameters and buffers must share the input's dtype, except
    that a float16/bfloat16 input also accepts parameters and buffers that are all float32.
    """
    if not input.is_floating_point():
        raise NotImplementedError(
            f'"{fn}" not implemented for {input.dtype}: the input must be a floating-point tensor'
        )
    low_precision = input.dtype in (torch.float16, torch.bfloat16)
    dtypes = {t.dtype for t in others if t is not None}  # parameters and buffers must all agree
    if dtypes and not (dtypes == {input.dtype} or (low_precision and dtypes == {torch.float32})):
        raise RuntimeError(
            f"{fn}: mixed dtypes: the input is {input.dtype} but the parameters/buffers are "
            f"{sorted(map(str, dtypes))}; they must all be {input.dtype}"
            + (" (or all torch.float32)" if low_precision else "")
            + "; convert the module with .to(dtype) or the input to match"
        )
    return torch.float32 if low_precision else input.dtype


def check_eps(fn: str, eps: float, training: bool) -> None:
    if training and eps <= 0.0:
        raise ValueError(f"{fn} eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"{fn} eps must be non-negative, but got {eps}")


def require_channels(fn: str, input: Tensor) -> None:
    if input.dim() < 2:
        raise IndexError(
            f"{fn} expects an input of shape (N, C, *), got a {input.dim()}-D tensor "
            f"of shape {list(input.shape)}"
        )


def batch_norm_args(input, running_mean, running_var, weight, bias, training, eps) -> None:
    """Raise what torch raises for arguments batch_norm cannot use."""
    if training:
        verify_batch_size(input.shape)
    check_eps("batch_norm", eps, training)
    if input.numel() == 0:
        return
    # torch sees C = 0 here: a RuntimeError, unless there is nothing per-channel to check
    if input.dim() < 2:
        nothing_checked = training and all(
            t is None for t in (running_mean, running_var, weight, bias)
        )
        raise (IndexError if nothing_checked else RuntimeError)(
            f"batch_norm expects an input of shape (N, C, *), got a {input.dim()}-D tensor "
            f"of shape {list(input.shape)}"
        )
    C = input.shape[1]
    per_channel(C, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    if not training:
        if running_mean is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        if running_var is None:
            raise RuntimeError("running_var must be defined in evaluation mode")
    elif (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    buffers = {"running_mean": running_mean, "running_var": running_var}
    for name, t in buffers.items():  # weight and bias may have any shape, the buffers may not
        if t is not None and t.dim() != 1:
            raise RuntimeError(
                f"{name} must be a 1-D tensor of {C} values, got shape {list(t.shape)}"
            )


def instance_norm_args(input, running_mean, running_var, weight, bias, use_input_stats) -> None:
    """Raise what torch raises for arguments instance_norm cannot use."""
    if use_input_stats:
        verify_spatial_size(input.shape)
    require_channels("instance_norm", input)
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError(
            "Expected running_mean and running_var to be defined when use_input_stats is false"
        )
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    C = input.shape[1]
    per_channel(C, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)


def layer_norm_args(input, normalized_shape: list[int], weight, bias) -> None:
    """Raise what torch raises for arguments layer_norm cannot use."""
    k = len(normalized_shape)
    if k == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., "
            "containing at least one element, but got normalized_shape = []"
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


def group_norm_args(input, num_groups: int, weight, bias) -> None:
    """Raise what torch raises for arguments group_norm cannot use."""
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    N, C = input.shape[:2]
    verify_batch_size([N * C // num_groups, num_groups, *input.shape[2:]])
    if num_groups <= 0:
        raise RuntimeError(f"Expected num groups to be greater than 0, got {num_groups}")
    if C % num_groups != 0:
        raise RuntimeError(
            "Expected number of channels in input to be divisible by num_groups, "
            f"but got input of shape {list(input.shape)} and num_groups={num_groups}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.numel() != C):
            raise RuntimeError(
                f"Expected {name} to be a vector of size equal to the number of channels "
                f"in input, but got {name} of shape {list(t.shape)} "
                f"and input of shape {list(input.shape)}"
            )


# ---------------------------------------------------------------------------
# Arguments read as torch's argument parser reads them: a value of the wrong kind is a
# TypeError before any computation (e.g. ``num_groups=2.0``, a list as ``weight``).
# ---------------------------------------------------------------------------


def _wrong_type(fn: str, name: str, pos: int, kind: str, value: object) -> TypeError:
    return TypeError(
        f"{fn}(): argument '{name}' (position {pos}) must be {kind}, not {type(value).__name__}"
    )


def tensor_arg(fn: str, name: str, pos: int, value: object, optional: bool = True) -> None:
    """A Tensor (or None where the argument is optional)."""
    if not (isinstance(value, Tensor) or (optional and value is None)):
        raise _wrong_type(fn, name, pos, "Tensor", value)


def int_arg(fn: str, name: str, pos: int, value: object) -> int:
    """An int: a Python or NumPy integer or a 0-d integer tensor; never a bool or a float."""
    if isinstance(value, Tensor):
        ok = value.dim() == 0 and not value.is_floating_point() and not value.is_complex()
        ok = ok and value.dtype != torch.bool
    else:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok:
        raise _wrong_type(fn, name, pos, "int", value)
    return int(value)


def float_arg(fn: str, name: str, pos: int, value: object) -> float:
    """A float: any real number (ints and bools too) or a 0-d tensor that needs no gradient."""
    if isinstance(value, Tensor):
        ok = value.dim() == 0 and not value.requires_grad
    else:
        ok = hasattr(type(value), "__float__") and not isinstance(value, (complex, str))
    if not ok:
        raise _wrong_type(fn, name, pos, "float", value)
    return float(value.real if isinstance(value, Tensor) and value.is_complex() else value)


def bool_arg(fn: str, name: str, pos: int, value: object) -> bool:
    """A bool, and only a Python bool: not 0/1, not a tensor."""
    if not isinstance(value, bool):
        raise _wrong_type(fn, name, pos, "bool", value)
    return value


def int_list_arg(fn: str, name: str, pos: int, value: object) -> list[int]:
    """A list, tuple or torch.Size of ints (a one-element integer tensor counts as an int)."""
    if not isinstance(value, (list, tuple)):
        raise _wrong_type(fn, name, pos, "tuple of ints", value)
    out = []
    for i, v in enumerate(value):
        if isinstance(v, Tensor) and v.numel() == 1 and v.dtype == torch.bool:
            raise RuntimeError("Expected scalar.isIntegral(false) to be true, but got false.")
        if isinstance(v, Tensor) and v.numel() == 1 and not v.is_floating_point():
            v = v.item()
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise TypeError(
                f"{fn}(): argument '{name}' (position {pos}) must be tuple of ints, "
                f"but found element of type {type(v).__name__} at pos {i}"
            )
        out.append(int(v))
    return out


# ---------------------------------------------------------------------------
# rms_norm, local_response_norm, normalize.
# ---------------------------------------------------------------------------


def rms_norm_args(input, normalized_shape, weight, eps) -> list[int]:
    """Raise what torch raises for arguments rms_norm cannot use; the shape as a list."""
    tensor_arg("rms_norm", "input", 1, input, optional=False)
    shape = int_list_arg("rms_norm", "normalized_shape", 2, normalized_shape)
    tensor_arg("rms_norm", "weight", 3, weight)
    if eps is not None:
        float_arg("rms_norm", "eps", 4, eps)
    layer_norm_args(input, shape, weight, None)
    if not (input.is_floating_point() or input.is_complex()):
        raise NotImplementedError(f'"rms_norm" not implemented for {input.dtype}')
    return shape


def local_response_norm_args(input: Tensor, size: object) -> None:
    """Raise what torch raises for arguments local_response_norm cannot use."""
    if input.dim() < 3:
        raise ValueError(
            f"Expected 3D or higher dimensionality input (got {input.dim()} dimensions)"
        )
    if input.numel() == 0:
        return  # torch returns an empty input before looking at anything else
    size = int_arg("local_response_norm", "size", 2, size)
    if size <= 0:
        raise RuntimeError(f"kernel size should be greater than zero, but got {size}")
    if not (input.is_floating_point() or input.dtype == torch.int64):  # torch's average pooling
        raise NotImplementedError(f'"local_response_norm" not implemented for {input.dtype}')


def floating_or_complex(fn: str, input: Tensor) -> None:
    """RuntimeError unless ``input`` holds floating-point or complex numbers."""
    if not (input.is_floating_point() or input.is_complex()):
        raise RuntimeError(
            f"{fn}: Expected a floating point or complex tensor as input. Got {input.dtype}"
        )
