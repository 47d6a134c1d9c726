"""convert_norm_layers: swap every normalization layer of a model for its twin, in place.

``to="normtut"`` replaces each ``torch.nn`` norm layer by the normtut class of the same name,
``to="torch"`` does the reverse. Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, the
new layer takes over the old one's Parameter and buffer objects (an optimizer built before
keeps working, and both libraries see the same tensors) and its training flag.
"""

from __future__ import annotations

import inspect

from torch import nn

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
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
from .syncbatchnorm import SyncBatchNorm

# (torch's class, normtut's class): every normtut layer that has a torch twin.
TWINS: tuple[tuple[type[nn.Module], type[nn.Module]], ...] = (
    (nn.BatchNorm1d, BatchNorm1d),
    (nn.BatchNorm2d, BatchNorm2d),
    (nn.BatchNorm3d, BatchNorm3d),
    (nn.InstanceNorm1d, InstanceNorm1d),
    (nn.InstanceNorm2d, InstanceNorm2d),
    (nn.InstanceNorm3d, InstanceNorm3d),
    (nn.LayerNorm, LayerNorm),
    (nn.GroupNorm, GroupNorm),
    (nn.RMSNorm, RMSNorm),
    (nn.LocalResponseNorm, LocalResponseNorm),
    (nn.SyncBatchNorm, SyncBatchNorm),
    (nn.LazyBatchNorm1d, LazyBatchNorm1d),
    (nn.LazyBatchNorm2d, LazyBatchNorm2d),
    (nn.LazyBatchNorm3d, LazyBatchNorm3d),
    (nn.LazyInstanceNorm1d, LazyInstanceNorm1d),
    (nn.LazyInstanceNorm2d, LazyInstanceNorm2d),
    (nn.LazyInstanceNorm3d, LazyInstanceNorm3d),
)


def convert_norm_layers(module: nn.Module, to: str = "normtut") -> nn.Module:
    """Replace every normalization layer in ``module``, at any depth, by its twin.

    ``to="normtut"``: torch's layers become normtut's; ``to="torch"``: the reverse. Works
    **in place** and returns ``module``; if ``module`` is itself a norm layer, its twin is
    returned. Only the exact classes in ``TWINS`` are converted (a subclass may override
    ``forward``, so it is left alone, as are layers without a twin such as
    SwitchableNorm2d or FrozenBatchNorm2d). The twin holds the same Parameter and buffer
    objects, the same settings (``eps``, ``momentum``, ...) and training flag; hooks
    registered on the old layer are not carried over. A layer used in two places is
    replaced by one twin used in both.
    """
    if to not in ("normtut", "torch"):
        raise ValueError(f'to must be "normtut" or "torch", got {to!r}')
    classes = {a: b for a, b in TWINS} if to == "normtut" else {b: a for a, b in TWINS}
    if type(module) in classes:
        return _twin(module, classes[type(module)])
    _replace(module, classes, {})
    return module


def _replace(module: nn.Module, classes: dict, done: dict[int, nn.Module]) -> None:
    for name, child in list(module._modules.items()):  # not named_children(): it skips repeats
        if child is None:
            continue
        if type(child) in classes:
            if id(child) not in done:
                done[id(child)] = _twin(child, classes[type(child)])
            setattr(module, name, done[id(child)])  # also works in Sequential/ModuleList/Dict
        else:
            _replace(child, classes, done)


def _twin(layer: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """An instance of ``cls`` holding ``layer``'s tensors and settings.

    Built on the meta device (nothing allocated), then given the very Parameter and buffer
    objects of ``layer`` and every public attribute it has (settings, ``training``).
    """
    init = inspect.signature(cls).parameters
    kwargs = {name: getattr(layer, name) for name in init if name in layer.__dict__}
    if "bias" in init:  # a constructor flag in the twin, a Parameter (or None) in the layer
        kwargs["bias"] = layer.bias is not None
    if "device" in init:
        kwargs["device"] = "meta"
    twin = cls(**kwargs)
    twin._parameters.clear()
    twin._parameters.update(layer._parameters)
    twin._buffers.clear()
    twin._buffers.update(layer._buffers)
    twin._non_persistent_buffers_set = set(layer._non_persistent_buffers_set)
    twin.__dict__.update({k: v for k, v in layer.__dict__.items() if not k.startswith("_")})
    return twin
