"""Folding an eval-mode BatchNorm into the convolution or linear layer before it.

In eval mode a BatchNorm layer is a fixed affine map of each channel c,

    y_c = (z_c - mu_c) / sqrt(var_c + eps) * gamma_c + beta_c
        = s_c * z_c + (beta_c - s_c * mu_c),    s_c = gamma_c / sqrt(var_c + eps).

If z = W x + b comes from a convolution or a linear layer, the two maps compose into
one layer of the same kind:

    W'_c = s_c * W_c,    b'_c = (b_c - mu_c) * s_c + beta_c.

The functions mirror ``torch.nn.utils.fusion`` (names, signatures, errors, and results
bit for bit); ``fold_batchnorm`` applies them to a whole model.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .batchnorm import _BatchNorm
from .frozen import FrozenBatchNorm2d

# What fold_batchnorm folds: torch's BatchNorm*d (and SyncBatchNorm), normtut's, and the
# frozen one, which computes the same eval-mode map with fixed buffers.
BATCHNORMS = (nn.modules.batchnorm._BatchNorm, _BatchNorm, FrozenBatchNorm2d)


def fuse_conv_bn_weights(
    conv_w: Tensor,
    conv_b: Tensor | None,
    bn_rm: Tensor,
    bn_rv: Tensor,
    bn_eps: float,
    bn_w: Tensor | None,
    bn_b: Tensor | None,
    transpose: bool = False,
    *,
    groups: int = 1,
) -> tuple[nn.Parameter, nn.Parameter]:
    """The folded (weight, bias) of a convolution followed by an eval-mode BatchNorm.

    As ``torch.nn.utils.fusion.fuse_conv_bn_weights``: the math runs in the promoted
    dtype of the two layers and is cast back to the convolution's dtypes; a missing
    conv bias counts as 0, a missing BN weight as 1 and BN bias as 0.
    ``transpose=True`` is for a ConvTranspose weight ``[C_in, C_out / groups, *k]``;
    ``groups`` (keyword-only, normtut's addition) is then needed when it is above 1,
    where torch's version fails.
    """
    weight_dtype = conv_w.dtype
    bias_dtype = conv_b.dtype if conv_b is not None else weight_dtype
    if conv_b is None:
        conv_b = torch.zeros_like(bn_rm)  # no bias: b = 0
    if bn_w is None:
        bn_w = torch.ones_like(bn_rm)  # affine=False: gamma = 1
    if bn_b is None:
        bn_b = torch.zeros_like(bn_rm)  # no BN bias: beta = 0
    inv_std = torch.rsqrt(bn_rv + bn_eps)  # 1 / sqrt(var + eps), per output channel
    scale = bn_w * inv_std  # s = gamma / sqrt(var + eps)

    if transpose and groups > 1:
        # ConvTranspose weight [C_in, C_out/G, *k]: output channel g * C_out/G + j is
        # column j of group g's rows. Viewed as [G, C_in/G, C_out/G, *k] to scale it.
        k = conv_w.shape[2:]
        grouped = conv_w.reshape(groups, -1, conv_w.shape[1], *k)
        s = scale.reshape(groups, 1, -1, *[1] * len(k))
        fused_w = (grouped * s).reshape(conv_w.shape)  # W'_c = W_c * s_c, per group
    else:
        # Output channels on axis 0 of a Conv weight [C_out, C_in/G, *k], axis 1 of a
        # ConvTranspose weight [C_in, C_out, *k].
        shape = [1, -1] if transpose else [-1, 1]
        shape += [1] * (conv_w.dim() - 2)
        fused_w = conv_w * scale.reshape(shape)  # W'_c = W_c * s_c
    fused_b = (conv_b - bn_rm) * inv_std * bn_w + bn_b  # b'_c = (b_c - mu_c) s_c + beta

    return (
        nn.Parameter(fused_w.to(weight_dtype), conv_w.requires_grad),
        nn.Parameter(fused_b.to(bias_dtype), conv_b.requires_grad),
    )


def fuse_linear_bn_weights(
    linear_w: Tensor,
    linear_b: Tensor | None,
    bn_rm: Tensor,
    bn_rv: Tensor,
    bn_eps: float,
    bn_w: Tensor | None,
    bn_b: Tensor | None,
) -> tuple[nn.Parameter, nn.Parameter]:
    """The folded (weight, bias) of a linear layer followed by an eval-mode BatchNorm.

    As ``torch.nn.utils.fusion.fuse_linear_bn_weights``, which also allows one BN
    feature for all outputs. Unlike torch's, a BN without affine parameters (``bn_w``,
    ``bn_b`` None) is accepted, and the bias always has the linear layer's out_features
    values (torch's has one value when there is one BN feature and no linear bias).
    """
    weight_dtype = linear_w.dtype
    bias_dtype = linear_b.dtype if linear_b is not None else weight_dtype
    if linear_b is None:
        out_features = linear_w.shape[0]
        linear_b = torch.zeros(out_features, dtype=bn_rm.dtype, device=bn_rm.device)
    inv_std = torch.rsqrt(bn_rv + bn_eps)  # 1 / sqrt(var + eps), per feature
    scale = inv_std if bn_w is None else bn_w * inv_std  # s = gamma / sqrt(var + eps)

    fused_w = linear_w * scale.unsqueeze(-1).to(weight_dtype)  # row c: W'_c = W_c * s_c
    fused_b = (linear_b - bn_rm) * scale  # (b_c - mu_c) * s_c
    if bn_b is not None:
        fused_b = fused_b + bn_b  # b'_c = (b_c - mu_c) * s_c + beta_c

    return (
        nn.Parameter(fused_w, linear_w.requires_grad),
        nn.Parameter(fused_b.to(bias_dtype), linear_b.requires_grad),
    )


def _require_eval_statistics(layer: nn.Module, bn: nn.Module) -> None:
    """Both layers in eval mode and ``bn`` with running statistics: AssertionError, as torch."""
    if layer.training or bn.training:
        raise AssertionError("Fusion only for eval!")
    if bn.running_mean is None or bn.running_var is None:
        raise AssertionError("bn.running_mean and bn.running_var must not be None")


def _bn_state(bn: nn.Module) -> tuple:
    """What folding needs of a BatchNorm: (running_mean, running_var, eps, weight, bias)."""
    return bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias


def fuse_conv_bn_eval(
    conv: nn.Module,
    bn: nn.Module,
    transpose: bool = False,
) -> nn.Module:
    """A new convolution computing ``bn(conv(x))`` for eval-mode ``conv`` and ``bn``.

    As ``torch.nn.utils.fusion.fuse_conv_bn_eval``; ``bn`` may be torch's or normtut's
    BatchNorm (or FrozenBatchNorm2d). ``transpose=True`` for ConvTranspose layers,
    grouped ones included. Raises AssertionError, as torch does, if either layer is in
    training mode or ``bn`` has no running statistics; RuntimeError if the channels do
    not match or ``transpose`` contradicts the layer (torch would fold the wrong axis).
    """
    _require_eval_statistics(conv, bn)
    if transpose != getattr(conv, "transposed", transpose):
        kind = "a ConvTranspose" if conv.transposed else "a Conv (not transposed)"
        raise RuntimeError(
            f"fuse_conv_bn_eval: transpose={transpose} but the layer is {kind}: "
            f"pass transpose={conv.transposed}"
        )
    groups = getattr(conv, "groups", 1)
    out_channels = conv.weight.shape[1] * groups if transpose else conv.weight.shape[0]
    if bn.running_mean.numel() != out_channels:
        raise RuntimeError(
            f"fuse_conv_bn_eval: the convolution has {out_channels} output channels "
            f"but the BatchNorm normalizes {bn.running_mean.numel()}"
        )
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fuse_conv_bn_weights(
        fused.weight, fused.bias, *_bn_state(bn), transpose, groups=groups
    )
    return fused


def fuse_linear_bn_eval(linear: nn.Linear, bn: nn.Module) -> nn.Linear:
    """A new linear layer computing ``bn(linear(x))`` for eval-mode layers.

    As ``torch.nn.utils.fusion.fuse_linear_bn_eval``: the BN's features must be the
    linear layer's outputs (an (N, C) input to BatchNorm1d), or be a single feature.
    Raises AssertionError, as torch does, for a layer in training mode, mismatched
    features or a BN without running statistics.
    """
    _require_eval_statistics(linear, bn)
    C = bn.running_mean.numel()  # bn.num_features (FrozenBatchNorm2d has none)
    if linear.out_features != C and C != 1:
        raise AssertionError(
            "To fuse, linear.out_features == bn.num_features or bn.num_features == 1, "
            f"got linear.out_features={linear.out_features} and bn.num_features={C}"
        )
    fused = copy.deepcopy(linear)
    fused.weight, fused.bias = fuse_linear_bn_weights(fused.weight, fused.bias, *_bn_state(bn))
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference, with BatchNorms folded into the layer before.

    The copy is in eval mode and computes what ``model`` computes in eval mode;
    ``model`` is not changed. Inside every ``nn.Sequential`` (at any depth; subclasses
    that keep Sequential's forward count), a BatchNorm that directly follows a Conv or
    Linear is folded into it and its slot becomes ``nn.Identity``, so indices and the
    state_dict keys of the other layers stay as they were. A BatchNorm stays where it
    does not follow a Conv/Linear, has no running statistics, does not take that
    layer's output shape (e.g. BatchNorm2d after a Linear), or where either layer has
    hooks or parametrizations. A Linear is folded with a BatchNorm1d of out_features
    features as on (N, C) inputs: on an (N, C, L) input with C == out_features the
    fold is wrong.
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):  # each container once, even if shared
        chains = type(module).forward is nn.Sequential.forward  # not a custom forward
        if isinstance(module, nn.Sequential) and chains:
            _fold_sequential(module)
    return folded


def _fold_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)  # not named_children(): it skips a layer used twice
    for before, after in itertools.pairwise(names):
        layer, bn = seq._modules[before], seq._modules[after]
        if not _foldable(layer, bn):
            continue
        if isinstance(layer, nn.Linear):
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            fused = fuse_conv_bn_eval(layer, bn, transpose=layer.transposed)
        # New modules in these two slots only: a layer also used elsewhere stays there.
        seq._modules[before], seq._modules[after] = fused, nn.Identity().eval()


def _foldable(layer: nn.Module | None, bn: nn.Module | None) -> bool:
    """Whether ``bn(layer(x))`` can become one layer of ``layer``'s kind."""
    if not isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear)):
        return False
    if not isinstance(bn, BATCHNORMS):
        return False
    if bn.running_mean is None or bn.running_var is None:
        return False  # without running statistics: batch statistics, also in eval
    for m in (layer, bn):
        if m._forward_hooks or m._forward_pre_hooks:
            return False  # a hook would see other values
        if parametrize.is_parametrized(m):
            return False  # e.g. weight_norm: the weight is recomputed on every call
        if any(nn.parameter.is_lazy(t) for t in (*m.parameters(), *m.buffers())):
            return False  # a lazy layer that has not seen an input yet
    C = bn.running_mean.numel()
    if isinstance(layer, nn.Linear):
        # A Linear maps the last axis, a BN normalizes axis 1: the same axis only on an
        # (N, C) input, which BatchNorm2d/3d refuse. One BN feature folds anywhere.
        return C == 1 or (C == layer.out_features and _takes_dims(bn, 2))
    return C == layer.out_channels and _takes_dims(bn, layer.weight.dim())  # (N, C, *k)


def _takes_dims(bn: nn.Module, dims: int) -> bool:
    """Whether ``bn`` accepts a ``dims``-D input (its own check, on a meta tensor)."""
    check = getattr(bn, "_check_input_dim", None)
    if check is None:
        return True  # FrozenBatchNorm2d: any (N, C, ...) input
    try:
        check(torch.empty([1] * dims, device="meta"))
    except ValueError:
        return False
    return True
