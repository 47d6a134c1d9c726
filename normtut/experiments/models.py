"""LeNet with a pluggable normalization layer, after seed 002.

The seed is Dive into Deep Learning's LeNet with batch normalization. The layout is the
seed's ``nn.Sequential``, index for index, so state_dict keys match it:

    0 Conv2d(C_in, 6, 5)   1 norm2d(6)    2 act  3 MaxPool2d(2)
    4 Conv2d(6, 16, 5)     5 norm2d(16)   6 act  7 MaxPool2d(2)   8 Flatten
    9 Linear(F, 120)      10 norm1d(120) 11 act
   12 Linear(120, 84)     13 norm1d(84)  14 act  15 Linear(84, num_classes)

Normalization sits after both convolutions *and* after both hidden fully-connected layers.
With ``norm="none"`` the four norm slots hold ``nn.Identity`` so the indices stay the same.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from ..batchnorm import BatchNorm1d
from ..factory import get_norm_layer, group_norm_layer
from ..layernorm import LayerNorm
from ..switchnorm import SwitchableNorm1d

# Short names (the experiment's) -> get_norm_layer's names.
NORMS = {
    "none": "none",
    "bn": "batch",
    "gn": "group",
    "ln": "layer",
    "in": "instance",
    "sn": "switchable",
}
NORM_SLOTS = ("1", "5", "10", "13")  # names of the norm layers in LeNet: conv1, conv2, fc1, fc2
GN_MAX_GROUPS = 4  # LeNet's GroupNorm: the largest divisor of C that is at most 4


Factory = Callable[[int], nn.Module]  # C -> a norm layer for C channels or features


def norm_factories(norm: str) -> tuple[Factory, Factory]:
    """The (after-conv, after-linear) layer factories for a norm name.

    After a convolution (N, C, H, W): ``get_norm_layer``'s layer, except that GroupNorm
    gets at most GN_MAX_GROUPS = 4 groups (the factory allows 32, which for LeNet's 6
    and 16 channels means one channel per group: InstanceNorm).

    After a linear layer (N, C):
      bn  BatchNorm1d(C)       each feature over the N samples
      gn  GroupNorm(G, C)      per sample, over the C/G features of a group
      ln  LayerNorm(C)         per sample, over all C features
      in  nn.Identity          IN's statistics of one value per (sample, feature)
                               are the value itself: nothing to normalize with
      sn  SwitchableNorm1d(C)  a learned mixture of LN and BN statistics
    """
    if norm not in NORMS and norm not in NORMS.values():
        names = f"{', '.join(NORMS)} (or {', '.join(NORMS.values())})"
        raise ValueError(f"unknown norm {norm!r}; valid names: {names}")
    long = NORMS.get(norm, norm)
    if long == "group":
        group = functools.partial(group_norm_layer, max_groups=GN_MAX_GROUPS)
        return group, group
    after_linear = {
        "batch": BatchNorm1d,
        "layer": LayerNorm,
        "instance": nn.Identity,  # nn.Identity(C) ignores C
        "switchable": SwitchableNorm1d,
        "none": nn.Identity,
    }
    return get_norm_layer(long), after_linear[long]


def _conv_out(size: int, padding: int) -> int:
    """Map side after Conv2d(kernel 5, padding) and MaxPool2d(2): floor((size + 2p - 4) / 2)."""
    return (size + 2 * padding - 4) // 2


class LeNet(nn.Sequential):
    """Seed 002's LeNet: two conv-norm-act-pool blocks, linear-norm-act twice, then a classifier.

    ``norm``: 'none', 'bn', 'gn', 'ln', 'in', 'sn' (or get_norm_layer's 'batch', 'group', ...);
    see ``norm_factories`` for the layer each name puts after the convolutions and the linear
    layers. ``norm2d``/``norm1d`` (``C -> module``) override them, e.g. ``nn.BatchNorm2d`` and
    ``nn.BatchNorm1d`` for the seed's concise version with torch's own layers.
    ``in_size``: side of the square input (28 for Fashion-MNIST, 8 for sklearn's digits).
    ``padding`` of both convolutions: None picks 0 (the seed's: 28x28 gives 16 * 4 * 4 = 256
    features) when the input is large enough, else 2 (8x8 gives 16 * 2 * 2 = 64).
    ``activation``: nn.Sigmoid as in the seed; any ``() -> module``.
    """

    def __init__(
        self,
        norm: str = "bn",
        in_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        padding: int | None = None,
        activation: Callable[[], nn.Module] = nn.Sigmoid,
        norm2d: Factory | None = None,
        norm1d: Factory | None = None,
    ) -> None:
        default2d, default1d = norm_factories(norm)
        norm2d = norm2d or default2d
        norm1d = norm1d or default1d
        if padding is None:
            padding = 0 if _conv_out(_conv_out(in_size, 0), 0) >= 1 else 2
        side = _conv_out(_conv_out(in_size, padding), padding)
        if side < 1:
            raise ValueError(
                f"a {in_size}x{in_size} input is too small for LeNet with padding={padding}"
            )
        features = 16 * side * side
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
            norm2d(6),
            activation(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5, padding=padding),
            norm2d(16),
            activation(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Flatten(),
            nn.Linear(features, 120),
            norm1d(120),
            activation(),
            nn.Linear(120, 84),
            norm1d(84),
            activation(),
            nn.Linear(84, num_classes),
        )
        self.norm = norm
        self.in_size = in_size

    def __getitem__(self, idx: int | slice) -> nn.Module:
        """``net[i]`` is a layer; ``net[a:b]`` a plain nn.Sequential of those layers.

        ``net[:10]`` computes the input of norm slot '10'.
        """
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def norm_layers(self) -> dict[str, nn.Module]:
        """The four norm slots by name.

        '1' and '5' follow the convolutions, '10' and '13' the linear layers.
        """
        return {name: self[int(name)] for name in NORM_SLOTS}
