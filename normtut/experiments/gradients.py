"""Gradient sizes at initialization, layer by layer, with and without BatchNorm.

``deep_mlp`` stacks ``depth`` blocks linear -> [BatchNorm1d] -> activation for the 64 pixels
of a digit; ``weight_gradient_norms`` backpropagates one batch and measures ||dL/dW|| of
every weight matrix, from the first layer to the last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..batchnorm import BatchNorm1d


def deep_mlp(
    depth: int,
    batchnorm: bool,
    width: int = 64,
    activation: Callable[[], nn.Module] = nn.ReLU,
    seed: int = 0,
) -> nn.Sequential:
    """``depth`` hidden blocks of ``width`` units for 8x8 digits, then a linear classifier."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    features = 64
    for _ in range(depth):
        layers.append(nn.Linear(features, width))
        if batchnorm:
            layers.append(BatchNorm1d(width))
        layers.append(activation())
        features = width
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers)


def weight_gradient_norms(model: nn.Module, x: Tensor, y: Tensor) -> list[float]:
    """||dL/dW|| (Frobenius) of every Linear and Conv2d weight, in order, for one batch.

    One cross-entropy backward pass in training mode (BatchNorm on batch statistics); the
    model's gradients are overwritten.
    """
    model.train()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return [w.grad.norm().item() for w in weights]


def plot_gradient_norms(curves: Mapping[str, Sequence[float]], title: str = "") -> Figure:
    """||dL/dW|| against the layer's position (1 = next to the input), log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for label, norms in curves.items():
        ax.plot(range(1, len(norms) + 1), norms, marker=".", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("weight layer (1 = first, next to the input)")
    ax.set_ylabel("gradient norm ||dL/dW|| (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
