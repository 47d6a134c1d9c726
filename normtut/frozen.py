"""FrozenBatchNorm2d (torchvision's semantics) and ``freeze_batchnorm``.

A frozen BN layer is the eval-mode BN layer with everything fixed: the running
statistics *and* the affine parameters are buffers, so ``.train()`` does not switch it
to batch statistics, a forward pass does not update anything, and an optimizer given
``model.parameters()`` does not see gamma and beta. Detection models fine-tune this way
when their batches are too small for useful batch statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .batchnorm import BatchNorm2d


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters.

    As ``torchvision.ops.FrozenBatchNorm2d``, in train and eval mode alike:
    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, folded into one scale
    and one shift per channel, y = x * scale + shift. The usual type promotion applies:
    a float16 input with float32 buffers gives a float32 output.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        # All four are buffers: saved in state_dict and moved by .to(), never trained.
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A BatchNorm2d checkpoint also has num_batches_tracked: it means nothing here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        # Eval-mode batch norm with the stored statistics, whatever self.training says.
        # torchvision's arithmetic: the per-channel vectors are reshaped to [1, C, 1, 1] first.
        w, b = self.weight.reshape(1, -1, 1, 1), self.bias.reshape(1, -1, 1, 1)
        mean, var = self.running_mean.reshape(1, -1, 1, 1), self.running_var.reshape(1, -1, 1, 1)
        scale = w * (var + self.eps).rsqrt()  # gamma / sqrt(var + eps)
        shift = b - mean * scale  # beta - mean * gamma / sqrt(var + eps)
        return x * scale + shift

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.weight.shape[0]}, eps={self.eps})"


_BATCHNORM2D = (nn.BatchNorm2d, BatchNorm2d)


def _frozen_copy(bn: nn.Module) -> FrozenBatchNorm2d:
    """A FrozenBatchNorm2d with ``bn``'s current state (weight 1 and bias 0 where it has none)."""
    frozen = FrozenBatchNorm2d(bn.num_features, bn.eps).to(bn.running_mean)  # same dtype and device
    with torch.no_grad():
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
        if bn.weight is not None:  # affine=False: gamma stays 1
            frozen.weight.copy_(bn.weight)
        if bn.bias is not None:  # affine=False or bias=False: beta stays 0
            frozen.bias.copy_(bn.bias)
    frozen.train(bn.training)
    return frozen


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module``, at any depth, by a frozen copy of its state.

    Works **in place** and returns ``module`` itself; only when ``module`` is itself a
    BatchNorm2d is a new FrozenBatchNorm2d returned (there is no parent to put it in).
    Both ``torch.nn.BatchNorm2d`` and ``normtut.BatchNorm2d`` (and their subclasses) are
    replaced; other layers, BatchNorm1d/3d included, are left alone. The frozen layer
    computes what the original computes in eval mode.

    Raises ValueError, before changing anything, if a BatchNorm2d has no running
    statistics (``track_running_stats=False`` at construction): such a layer normalizes
    with batch statistics in both modes, so there is nothing to freeze.
    """
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, _BATCHNORM2D)]
    for name, m in layers:
        if m.running_mean is None or m.running_var is None:
            where = f" {name!r}" if name else ""
            raise ValueError(
                f"cannot freeze the BatchNorm2d{where}: it was built with "
                "track_running_stats=False and has no running statistics "
                "(it always normalizes with batch statistics)"
            )
    if isinstance(module, _BATCHNORM2D):
        return _frozen_copy(module)
    _replace(module, {})
    return module


def _replace(module: nn.Module, done: dict[int, FrozenBatchNorm2d]) -> None:
    for name, child in list(module._modules.items()):  # not named_children(): it skips repeats
        if child is None:
            continue
        if isinstance(child, _BATCHNORM2D):
            if id(child) not in done:  # a layer used in two places gets one frozen copy
                done[id(child)] = _frozen_copy(child)
            setattr(module, name, done[id(child)])  # works for Sequential/ModuleList/ModuleDict too
        else:
            _replace(child, done)
