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


def shifted_moments(x: Tensor, dims: Sequence[int]) -> tuple[int, Tensor, Tensor, Tensor, Tensor]:
    """The data behind every statistic: n, K, d = x - K, mean(d) and the variance over dims.

    The textbook E[x^2] - E[x]^2 cancels catastrophically when ``|mean|`` >> std. Subtracting
    first K, each group's mean as float rounding gives it, keeps the numbers small; the
    moments of d = x - K then correct K's rounding: mean = K + mean(d), var = mean(d^2) -
    mean(d)^2 (Chan, Golub and LeVeque's corrected two-pass algorithm). ``d`` is returned
    for callers that go on to use x - mean = d - mean(d).
    """
    n = math.prod([x.shape[i] for i in dims])
    K = x.mean(dims, keepdim=True).detach()  # near the mean; any K gives the same mean and var
    K = torch.nan_to_num(K, nan=0.0, posinf=0.0, neginf=0.0)  # x - inf would be NaN
    d = x - K
    mean_d = d.mean(dims, keepdim=True)
    var = torch.addcmul(square_mean(d, dims), mean_d, mean_d, value=-1)
    return n, K, d, mean_d, var.clamp_min_(0.0)  # rounding must not leave var below 0


def square_mean(d: Tensor, dims: Sequence[int]) -> Tensor:
    """mean(d^2) over ``dims`` (kept as size-1 axes): d * d, averaged.

    Where each group is one contiguous run of values (the trailing axes of a contiguous
    tensor: LayerNorm, InstanceNorm, GroupNorm), the sums of squares are dot products d . d
    instead: one batched matrix product over pieces of 512 to 4096 values, added up per
    group. d is read once and no d^2 is written, one trip through memory instead of two.
    (Pieces, not whole groups: one dot product over a million values adds them up in a
    single long chain and loses accuracy; pieces keep the sum as accurate as ``torch.sum``.
    Shorter pieces would take bmm's slow path.)
    """
    n = math.prod([d.shape[i] for i in dims])
    piece = math.gcd(n, 4096)  # the longest run of at most 4096 values that divides n
    trailing = tuple(dims) == tuple(range(d.dim() - len(dims), d.dim()))
    by_dots = trailing and piece >= 512 and d.numel() > 0 and not _compiled_or_transformed()
    if not (by_dots and d.is_contiguous()):  # BatchNorm's groups are strided
        return (d * d).mean(dims, keepdim=True)
    pieces = d.reshape(-1, 1, piece)  # [groups * n / piece, 1, piece], a view
    sums = torch.bmm(pieces, pieces.transpose(1, 2)).reshape(-1, n // piece).sum(1)
    return (sums / n).reshape([1 if i in dims else size for i, size in enumerate(d.shape)])


def _compiled_or_transformed() -> bool:
    """Under torch.compile (inductor fuses and plans memory itself) or a torch.func transform
    (vmap batches values into the tensors): no hand-made memory tricks there."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def partial_moments(x: Tensor, dims: Sequence[int]) -> tuple[int, Tensor, Tensor]:
    """Count n, mean and M2 = sum of (x - mean)^2 of ``x`` over ``dims`` (kept as size-1 axes).

    What a distributed norm computes on each process and merges (``merge_moments``).
    """
    n, K, _, mean_d, var = shifted_moments(x, dims)
    return n, K + mean_d, var * n


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
    """Mean and biased variance of ``x`` over ``dims`` (kept as size-1 axes).

    From shifted data (``shifted_moments``): accurate even where ``|mean|`` >> std.
    """
    _, K, _, mean_d, var = shifted_moments(x, dims)
    return K + mean_d, var


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


def update_running(running: Tensor, batch_stat: Tensor, momentum: float) -> None:
    """In place: running <- (1 - momentum) * running + momentum * batch_stat.

    That is running + momentum * (batch_stat - running), a step of ``momentum`` from the old
    value towards the batch's (``lerp``). PyTorch's momentum weights the *new* batch (Keras'
    weights the old value). The batch statistic is a constant here: buffers are not
    differentiated. A float16/bfloat16 (or integer) buffer gets the update in float32,
    rounded once.
    """
    batch_stat = batch_stat.detach().reshape_as(running)
    expanded = running.numel() > 1 and 0 in running.stride()  # one memory cell for all
    if running.dtype == batch_stat.dtype == _opmath(running.dtype) and not expanded:
        running.lerp_(batch_stat, momentum)
        return
    acc = torch.promote_types(running.dtype, torch.float32)  # float32 at least
    if expanded:  # torch's CPU kernel writes channel after channel, each reading the last
        for c, stat in enumerate(batch_stat.reshape(-1)):
            running[c].copy_(running[c].to(acc).lerp(stat.to(acc), momentum))
    else:
        running.copy_(running.to(acc).lerp(batch_stat.to(acc), momentum))


def unbiased(var: Tensor, n: int) -> Tensor:
    """Bessel's correction: turn the biased variance of n values into the unbiased one."""
    if n == 1:  # one value: 0 / 0, NaN, as torch.var's unbiased variance of one value
        return var * math.nan
    return var * (n / (n - 1))


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
    checks.batch_norm_args(input, running_mean, running_var, weight, bias, training, eps, momentum)
    if input.numel() == 0:  # as in torch: an empty copy comes back, the buffers stay
        out = input.clone() if weight is None else input * weight[0]  # [0]: keeps the graph
        return out if bias is None else out + bias[0]
    dtype = checks.compute_dtype("batch_norm", input, running_mean, running_var, weight, bias)
    x = input.contiguous(memory_format=layout.batch_norm_format(input))  # as torch's kernel
    dims = (0, *range(2, x.dim()))  # BN: every axis except the channel axis
    norm = autograd.Norm(dims, eps, training, momentum, True, _channel_shape(x))
    return _normalize(x, weight, bias, running_mean, running_var, dtype, norm)


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
    checks.instance_norm_args(
        input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps
    )
    # Like torch, the running buffers may have any floating dtype here; weight and bias may not.
    dtype = checks.compute_dtype("instance_norm", input, weight, bias)
    x = input.contiguous()  # IN answers in the contiguous layout, whatever the input's
    dims = tuple(range(2, x.dim()))  # IN: the spatial axes of each (sample, channel)
    N, C, n = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    if use_input_stats and (C == 0 or (n == 0 and N > 0)):
        # As in torch, instances without values leave the buffers as they are (while an
        # empty batch, N = 0, averages no instances and leaves NaN buffers).
        running_mean = running_var = None
    norm = autograd.Norm(dims, eps, use_input_stats, momentum, True, _channel_shape(x))
    return _normalize(x, weight, bias, running_mean, running_var, dtype, norm)


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
    normalized_shape = checks.int_list_arg("layer_norm", "normalized_shape", 2, normalized_shape)
    checks.layer_norm_args(input, normalized_shape, weight, bias, eps)
    dtype = checks.compute_dtype("layer_norm", input, weight, bias)
    x = input.contiguous()  # LN answers in the contiguous layout, whatever the input's
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))  # LN: the trailing axes
    norm = autograd.Norm(dims, eps, affine_shape=tuple(normalized_shape))
    return _normalize(x, weight, bias, None, None, dtype, norm)


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
    checks.group_norm_args(input, num_groups, weight, bias, eps)
    N, C, G = input.shape[0], input.shape[1], num_groups
    dtype = checks.compute_dtype("group_norm", input, weight, bias)
    x = input.contiguous(memory_format=layout.suggest_memory_format(input))  # as torch's
    grouped = x.reshape(N, G, C // G, *x.shape[2:])  # [N, G, C/G, *spatial], a view
    dims = tuple(range(2, grouped.dim()))  # GN: (C/G, *spatial) in each group
    shape = (1, G, C // G) + (1,) * (x.dim() - 2)  # the per-channel affine, grouped likewise
    norm = autograd.Norm(dims, eps, affine_shape=shape)
    y = _normalize(grouped, weight, bias, None, None, dtype, norm)
    return y.reshape(x.shape)


def _normalize(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    dtype: torch.dtype,
    norm: autograd.Norm,
) -> Tensor:
    """``autograd.Normalize`` with weight and bias cast to ``dtype`` (no-ops mostly)."""
    weight, bias = [t if t is None or t.dtype == dtype else t.to(dtype) for t in (weight, bias)]
    args = (x, weight, bias, running_mean, running_var, norm)
    if torch.jit.is_tracing():  # a graph of aten ops that runs (and saves) without Python
        return autograd.Normalize.forward(*args)[0]
    if torch.compiler.is_compiling():  # Dynamo traces the Function, but not its jvp
        return autograd.CompiledNormalize.apply(*args)[0]
    return autograd.Normalize.apply(*args)[0]


def _channel_shape(input: Tensor) -> tuple[int, ...]:
    """[1, C, 1, 1, ...]: the shape a per-channel vector takes to broadcast over ``input``."""
    return (1, input.shape[1]) + (1,) * (input.dim() - 2)


# ===========================================================================
# More of torch.nn.functional: rms_norm, local_response_norm, normalize.
# They centre nothing, so they share nothing with moments/standardize above.
# ===========================================================================


def rms_norm(
    input: Tensor,
    normalized_shape: list[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """Root-mean-square normalization over the last ``len(normalized_shape)`` axes.

    y = x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the mean and without a bias.
    ``eps=None`` is the machine epsilon of the dtype the math runs in: float32's (about
    1.2e-7) for float16, bfloat16 and float32 inputs, float64's for float64. Same signature
    and results as ``F.rms_norm``.
    """
    normalized_shape = checks.rms_norm_args(input, normalized_shape, weight, eps)
    x = input.to(_opmath(input.dtype))  # float16/bfloat16 -> float32
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    y = x * torch.rsqrt((x * x).mean(dims, keepdim=True) + eps)  # x / sqrt(mean(x^2) + eps)
    if weight is not None:
        y = y * weight
    # torch's layout: a channels-last input keeps it, any other gives a contiguous output
    y = y.to(input.dtype)  # rounded once
    return y.contiguous(memory_format=layout.suggest_memory_format(input))


def local_response_norm(
    input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Tensor:
    """Local response normalization (AlexNet): each channel divided by its neighbours' energy.

    b_c = a_c / (k + alpha * mean of a_c'^2 over the ``size`` channels around c)^beta, the
    window running from c - size//2 to c + (size-1)//2 with zeros beyond the first and last
    channel. Same as ``F.local_response_norm``.
    """
    checks.local_response_norm_args(input, size)
    if input.numel() == 0:
        return input  # as torch: the input itself
    square = input * input
    # zeros around the channel axis (dim 1), so that every channel has a full window
    padding = (0, 0) * (input.dim() - 2) + (size // 2, (size - 1) // 2)
    padded = torch.nn.functional.pad(square, padding)
    if square.is_floating_point():  # the window mean, summed in float32 at least
        windows = padded.to(_opmath(square.dtype)).unfold(1, size, 1)  # [N, C, *, size]
        avg = (windows.sum(-1) / size).to(square.dtype)
    else:  # integer inputs: torch's average pooling divides with truncation
        avg = padded.long().unfold(1, size, 1).sum(-1).div(size, rounding_mode="trunc")
        avg = avg.to(square.dtype)
    div = avg.mul(alpha).add(k).pow(beta)  # (k + alpha * mean)^beta
    return input / div


def normalize(
    input: Tensor,
    p: float = 2.0,
    dim: int = 1,
    eps: float = 1e-12,
    out: Tensor | None = None,
) -> Tensor:
    """Divide ``input`` by its L_p norm along ``dim``: v / max(||v||_p, eps).

    Not a normalization layer (no statistics, no affine): torch's function of that name, with
    its signature and results. ``dim`` is an int or a tuple of ints, ``p`` any real number,
    ``inf`` or ``-inf`` (strings go to ``torch.linalg.matrix_norm``, as in torch).
    """
    norm = _vector_norm(input, p, dim)
    if out is None:
        return input / norm.clamp_min(eps).expand_as(input)
    return torch.div(input, norm.clamp_min_(eps).expand_as(input), out=out)


def _vector_norm(input: Tensor, p: float | str | None, dim) -> Tensor:
    """||x||_p over ``dim``, kept as size-1 axes: ``input.norm(p, dim, keepdim=True)``."""
    checks.tensor_method(input, "norm")
    vector = not isinstance(p, str) or (
        p == "fro" and (dim is None or isinstance(dim, int) or len(dim) <= 2)
    )
    if not vector:  # 'nuc', or 'fro' over more than two axes: a matrix norm, torch.linalg's
        return torch.linalg.matrix_norm(input, p, _dims(input, dim), keepdim=True)
    p = 2.0 if p is None or p == "fro" else p
    dims = checks.vector_norm_args(input, p, dim)
    return _PNorm.apply(input, p, dims)


class _PNorm(torch.autograd.Function):
    """||x||_p from primitives, with torch's derivative (``norm_backward`` in ATen).

    The hand-written backward matters where the norm or an entry is 0: the chain rule through
    sqrt or pow would give 0 * inf = NaN there, torch's formula masks those places to 0.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, p: float, dims: list[int]) -> Tensor:
        a = x.to(_opmath(x.dtype)).abs()  # |x| (real for complex x), in float32 at least
        if p == 0:
            norm = (a != 0).sum(dims, keepdim=True).to(a.dtype)  # the non-zero entries
        elif p == 1:
            norm = a.sum(dims, keepdim=True)
        elif p == 2:
            norm = (a * a).sum(dims, keepdim=True).sqrt()
        elif p == torch.inf:
            norm = a.amax(dims, keepdim=True)
        elif p == -torch.inf:
            norm = a.amin(dims, keepdim=True)
        else:
            norm = (a**p).sum(dims, keepdim=True) ** (1.0 / p)  # (sum |x|^p)^(1/p)
        return norm.to(x.real.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, ctx.p, ctx.dims = inputs
        ctx.save_for_backward(x, output)
        ctx.save_for_forward(x, output)

    @staticmethod
    def jvp(ctx, dx: Tensor, *_) -> Tensor:
        """Forward mode: the change of ||x||_p along dx, Re(sum conj(d||x||/dx) dx)."""
        slope, _, _ = _PNorm.backward(ctx, torch.ones_like(ctx.saved_tensors[1]))
        return (slope.conj() * dx).real.sum(ctx.dims, keepdim=True)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        x, norm = ctx.saved_tensors
        p = ctx.p
        if p == 0:  # a count: no gradient
            return torch.zeros_like(x), None, None
        if p == 1:  # d|x|/dx = sgn(x)
            return x.sgn() * grad, None, None
        if p == 2:  # x / ||x||, 0 where ||x|| = 0
            return grad * (x / norm).masked_fill(norm == 0, 0), None, None
        if p in (torch.inf, -torch.inf):  # shared equally by the entries that reach the max/min
            hit = (x.abs() == norm) | x.abs().isnan()
            return x.sgn() * (grad / hit.sum(ctx.dims, keepdim=True) * hit), None, None
        if p < 1:  # sgn(x) |x|^(p-1) ||x||^(1-p), 0 where x = 0
            scaled = x.sgn() * x.abs().pow(p - 1).masked_fill(x == 0, 0)
            return scaled * grad * norm.pow(1 - p), None, None
        # p > 1: x |x|^(p-2) / ||x||^(p-1), 0 where ||x|| = 0
        scaled = x.sgn() * x.abs().pow(p - 1) if p < 2 else x * x.abs().pow(p - 2)
        return scaled * (grad / norm.pow(p - 1)).masked_fill(norm == 0, 0), None, None


def _dims(input: Tensor, dim) -> list[int]:
    """``dim`` as a list of axes (None: all of them)."""
    if dim is None:
        return list(range(input.dim()))
    return [dim] if isinstance(dim, int) else list(dim)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype torch computes in: float32 for float16/bfloat16, else ``dtype`` itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
