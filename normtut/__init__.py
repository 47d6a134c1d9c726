"""normtut: PyTorch's normalization layers written out from tensor primitives.

Each layer is a drop-in for its ``torch.nn`` twin (torch 2.13) and is tested against it.
"""

from . import functional, optim
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .convert import convert_norm_layers
from .factory import get_norm_layer
from .frozen import FrozenBatchNorm2d, freeze_batchnorm
from .fusion import (
    fold_batchnorm,
    fuse_conv_bn_eval,
    fuse_conv_bn_weights,
    fuse_linear_bn_eval,
    fuse_linear_bn_weights,
)
from .groupnorm import GroupNorm
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .layernorm import LayerNorm
from .lazy import (
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
    LazyInstanceNorm1d,
    LazyInstanceNorm2d,
    LazyInstanceNorm3d,
)
from .localresponsenorm import LocalResponseNorm
from .rmsnorm import RMSNorm
from .switchnorm import SwitchableNorm1d, SwitchableNorm2d
from .syncbatchnorm import SyncBatchNorm

__all__ = [
    "functional",
    "optim",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    "LocalResponseNorm",
    "FrozenBatchNorm2d",
    "freeze_batchnorm",
    "SwitchableNorm1d",
    "SwitchableNorm2d",
    "get_norm_layer",
    "fuse_conv_bn_eval",
    "fuse_linear_bn_eval",
    "fuse_conv_bn_weights",
    "fuse_linear_bn_weights",
    "fold_batchnorm",
    "convert_norm_layers",
]
