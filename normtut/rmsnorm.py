"""RMSNorm: a drop-in for ``torch.nn.RMSNorm``.

LayerNorm without the mean: each sample is divided by the root mean square of its last
``len(normalized_shape)`` axes, then scaled per element. No bias, no centring.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import functional as F


class RMSNorm(nn.Module):
    """Root-mean-square normalization over the last len(normalized_shape) axes.

    y = x / sqrt(mean(x^2) + eps) * weight

    ``eps=None`` uses the machine epsilon of the dtype the math runs in (float32's for
    float16, bfloat16 and float32 inputs).
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        # gamma ("weight") only: an RMSNorm has no bias, not even a None one
        weight = torch.empty(self.normalized_shape, device=device, dtype=dtype)
        self.register_parameter("weight", nn.Parameter(weight) if elementwise_affine else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight <- 1."""
        if self.elementwise_affine:
            nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )
