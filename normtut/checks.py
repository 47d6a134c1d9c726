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


def batch_norm_args(
    input,
    running_mean,
    running_var,
    weight,
    bias,
    training,
    eps,
    momentum=0.1,
    *,
    check_batch_size: bool = True,
) -> None:
    """Raise what torch raises for arguments batch_norm cannot use, in torch's order.

    F.batch_norm's own checks, then the argument parser's (TypeError), then ATen's.
    ``check_batch_size=False`` leaves out the "more than 1 value per channel" check: a
    synchronized BatchNorm makes it on the count of all processes together.
    """
    if training and check_batch_size:
        verify_batch_size(input.size())
    check_eps("batch_norm", eps, training)
    parse_norm_args("batch_norm", input, weight, bias, running_mean, running_var)
    bool_arg("batch_norm", "training", 6, training)
    float_arg("batch_norm", "momentum", 7, momentum)
    float_arg("batch_norm", "eps", 8, eps)
    if input.numel() == 0:
        return
    aten_batch_norm_checks(input, running_mean, running_var, weight, bias, training)


def aten_batch_norm_checks(input, running_mean, running_var, weight, bias, training) -> None:
    """ATen's checks of batch_norm on a non-empty input (also reached through instance_norm)."""
    # torch sees C = 0 here: a RuntimeError, unless there is nothing per-channel to check
    if input.dim() < 2:
        mismatch = any(  # against C = 0
            t is not None and t.numel() != 0 for t in (running_mean, running_var, weight, bias)
        )
        missing = not training and (running_mean is None or running_var is None)
        raise (RuntimeError if mismatch or missing else IndexError)(
            f"batch_norm expects an input of shape (N, C, *), got a {input.dim()}-D tensor "
            f"of shape {list(input.shape)}"
        )
    C = input.shape[1]
    per_channel(C, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.requires_grad:  # buffers are updated, never differentiated
            raise RuntimeError(
                f"The function 'native_batch_norm' is not differentiable with respect to "
                f"argument '{name}'. This input cannot have requires_grad True."
            )
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
    # ... except for inputs that are neither contiguous nor channels-last: torch's kernel for
    # those asserts 1-D weight and bias
    dense = input.is_contiguous() or (
        input.dim() in (4, 5)
        and input.is_contiguous(
            memory_format=torch.channels_last if input.dim() == 4 else torch.channels_last_3d
        )
    )
    dense = dense and all(
        t is None or t.is_contiguous() for t in (running_mean, running_var, weight, bias)
    )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dim() != 1 and not dense:
            raise RuntimeError(f"{name} must be a 1-D tensor of {C} values for this input layout")


def instance_norm_args(
    input, running_mean, running_var, weight, bias, use_input_stats, momentum=0.1, eps=1e-5
) -> None:
    """Raise what torch raises for arguments instance_norm cannot use, in torch's order.

    torch's instance_norm repeats the per-channel tensors N times and runs batch_norm on the
    input viewed as [1, N*C, *]: its checks are batch_norm's on those.
    """
    if use_input_stats:
        verify_spatial_size(input.size())
    parse_norm_args("instance_norm", input, weight, bias, running_mean, running_var)
    bool_arg("instance_norm", "use_input_stats", 6, use_input_stats)
    float_arg("instance_norm", "momentum", 7, momentum)
    float_arg("instance_norm", "eps", 8, eps)
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError(
            "Expected running_mean and running_var to be defined when use_input_stats is false"
        )
    if input.dim() < 2:
        raise IndexError(
            f"instance_norm expects an input of shape (N, C, *), got a {input.dim()}-D tensor "
            f"of shape {list(input.shape)}"
        )
    per_channel_tensors = (weight, bias, running_mean, running_var)
    if any(t is not None and t.dim() > 1 for t in per_channel_tensors):
        raise RuntimeError(
            "weight, bias, running_mean and running_var must be 1-D (one value per channel)"
        )
    # torch's kernel for running statistics of another dtype reads running_var first
    if running_mean is not None and running_mean.dtype != input.dtype and running_var is None:
        raise RuntimeError("Expected a proper Tensor but got None for argument 'running_var'")
    if running_mean is not None and running_var is not None:
        if running_mean.dtype == input.dtype and not running_var.is_floating_point():
            raise RuntimeError(f"expected scalar type {input.dtype} but found {running_var.dtype}")
    N, C = input.shape[:2]
    if input.numel() == 0:  # (torch's empty path has its own errors, some of them bugs:
        return  # normtut returns the empty output, see tests/test_instancenorm.py)
    repeated = [None if t is None else t.repeat(N) for t in per_channel_tensors]
    stand_in = torch.empty((1, N * C, *input.shape[2:]), dtype=input.dtype, device="meta")
    w, b, rm, rv = repeated
    aten_batch_norm_checks(stand_in, rm, rv, w, b, use_input_stats)
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if use_input_stats and t is not None and t.numel() > 1 and 0 in t.stride():
            raise RuntimeError(  # their update is a copy_ into the buffer, as in torch
                f"unsupported operation: {name} is expanded (several elements share one memory "
                "location) and cannot be updated in place; clone() it first"
            )


def layer_norm_args(input, normalized_shape: list[int], weight, bias, eps=1e-5) -> None:
    """Raise what torch raises for arguments layer_norm cannot use."""
    tensor_arg("layer_norm", "input", 1, input, optional=False)
    tensor_arg("layer_norm", "weight", 3, weight)
    tensor_arg("layer_norm", "bias", 4, bias)
    float_arg("layer_norm", "eps", 5, eps)
    mixed_parameters("layer_norm", input, weight, bias)
    normalized_shape_checks(input, normalized_shape, weight, bias)


def normalized_shape_checks(
    input, normalized_shape: list[int], weight, bias, rms: bool = False
) -> None:
    """normalized_shape not empty, weight/bias of that shape, the input ending with it."""
    k = len(normalized_shape)
    if k == 0:
        raise RuntimeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., "
            "containing at least one element, but got normalized_shape = []"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and list(t.shape) != normalized_shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                f"{list(t.shape)} and normalized_shape = {normalized_shape}"
            )
    if rms and input.dim() < k:  # rms_norm checks the rank on its own, with a ValueError
        raise ValueError(f"Input tensor must have at least {k} dimensions, but got {input.dim()}")
    if list(input.shape[input.dim() - k :]) != normalized_shape or input.dim() < k:
        raise RuntimeError(
            f"Given normalized_shape={normalized_shape}, expected input with shape [*, "
            f"{', '.join(map(str, normalized_shape))}], but got input of size{list(input.shape)}"
        )


def group_norm_args(input, num_groups: int, weight, bias, eps=1e-5) -> None:
    """Raise what torch raises for arguments group_norm cannot use, in torch's order."""
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}"
        )
    N, C = input.shape[:2]
    verify_batch_size([N * C // num_groups, num_groups, *input.shape[2:]])
    tensor_arg("group_norm", "input", 1, input, optional=False)
    num_groups = int_arg("group_norm", "num_groups", 2, num_groups)
    tensor_arg("group_norm", "weight", 3, weight)
    tensor_arg("group_norm", "bias", 4, bias)
    float_arg("group_norm", "eps", 5, eps)
    mixed_parameters("group_norm", input, weight, bias)
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


def parse_norm_args(fn: str, input, weight, bias, running_mean, running_var) -> None:
    """The tensor arguments of batch_norm/instance_norm, in the parser's order (input first)."""
    tensor_arg(fn, "input", 1, input, optional=False)
    tensor_arg(fn, "weight", 2, weight)
    tensor_arg(fn, "bias", 3, bias)
    tensor_arg(fn, "running_mean", 4, running_mean)
    tensor_arg(fn, "running_var", 5, running_var)


def mixed_parameters(fn: str, input: Tensor, *params: Tensor | None) -> None:
    """layer_norm and group_norm look at the parameters' dtypes before the input's own: any
    parameter of another dtype is a RuntimeError unless the input is float16/bfloat16 and
    the parameters all float32 (so an integer input with float32 parameters is one too)."""
    dtypes = {t.dtype for t in params if t is not None}
    low_precision = input.dtype in (torch.float16, torch.bfloat16)
    if dtypes - {input.dtype} and not (low_precision and dtypes == {torch.float32}):
        raise RuntimeError(
            f"{fn}: mixed dtypes: the input is {input.dtype} but the parameters are "
            f"{sorted(map(str, dtypes))}"
        )


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
    normalized_shape_checks(input, shape, weight, None, rms=True)
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


def tensor_method(value: object, name: str) -> None:
    """AttributeError, as ``value.name(...)`` would raise, unless ``value`` is a tensor."""
    if not isinstance(value, Tensor):
        raise AttributeError(f"'{type(value).__name__}' object has no attribute '{name}'")


def vector_norm_args(input: Tensor, p: float, dim) -> list[int]:
    """Raise what torch.linalg.vector_norm raises; the axes to reduce, as non-negative ints."""
    dims = None if dim is None else int_list_arg("linalg_vector_norm", "dim", 3, _as_list(dim))
    floating_or_complex("linalg.vector_norm", input)
    n = max(input.dim(), 1)
    dims = list(range(input.dim())) if dims is None else dims
    for d in dims:
        if not -n <= d < n:
            raise IndexError(
                f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {d})"
            )
    dims = [d % n for d in dims]
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"dim {dims} appears multiple times in the list of dims")
    for d in dims:
        if input.dim() > 0 and input.shape[d] == 0 and (p < 0 or p == torch.inf):
            raise RuntimeError(
                f"linalg.vector_norm cannot compute the {p} norm on the dimension {d} because "
                "this dimension is empty and the operation does not have an identity"
            )
    return dims


def _as_list(dim):
    return [dim] if not isinstance(dim, (list, tuple)) else dim


def floating_or_complex(fn: str, input: Tensor) -> None:
    """RuntimeError unless ``input`` holds floating-point or complex numbers."""
    if not (input.is_floating_point() or input.is_complex()):
        raise RuntimeError(
            f"{fn}: Expected a floating point or complex tensor as input. Got {input.dtype}"
        )
