"""LayerNorm: a drop-in for ``torch.nn.LayerNorm``.

Statistics per sample over the trailing ``normalized_shape`` axes; the affine is per
element (``weight`` and ``bias`` have shape ``normalized_shape``), not per channel.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from torch import Tensor, nn

from . import functional as F
from . import state


class LayerNorm(nn.Module):
    """Layer normalization over the last len(normalized_shape) axes.

    y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        state.register_affine(self, self.normalized_shape, elementwise_affine, bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight <- 1, bias <- 0."""
        if self.elementwise_affine:
            state.reset_affine(self)

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}"
        )
