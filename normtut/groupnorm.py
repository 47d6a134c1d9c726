"""GroupNorm: a drop-in for ``torch.nn.GroupNorm``.

Channels are split into ``num_groups`` groups; statistics per sample and group over
(C/G, *spatial). GroupNorm(C, C) is InstanceNorm, GroupNorm(1, C) is LayerNorm over
(C, *spatial) up to the shape of the affine.
"""

from __future__ import annotations

from torch import Tensor, nn

from . import functional as F
from . import state


class GroupNorm(nn.Module):
    """Group normalization with a per-channel affine."""

    __constants__ = ["num_groups", "num_channels", "eps", "affine"]

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        state.register_affine(self, num_channels, affine, bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight <- 1, bias <- 0."""
        if self.affine:
            state.reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )
