"""LocalResponseNorm: a drop-in for ``torch.nn.LocalResponseNorm`` (AlexNet's normalization).

Each channel is divided by a power of the mean energy of its ``size`` neighbouring channels
at the same position. No statistics over the batch, nothing learned, no state.
"""

from __future__ import annotations

from torch import Tensor, nn

from . import functional as F


class LocalResponseNorm(nn.Module):
    """b_c = a_c / (k + alpha * mean of a_c'^2 over the ``size`` channels around c)^beta."""

    __constants__ = ["size", "alpha", "beta", "k"]

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def forward(self, input: Tensor) -> Tensor:
        return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
