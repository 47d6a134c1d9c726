"""A small experiment: a tiny convnet with SwitchableNorm2d layers learns its mixtures on digits.

sklearn's 8x8 digits (installed, offline), CPU, a few seconds: enough to watch the softmax
weights of each layer leave 1/3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..switchnorm import SwitchableNorm2d


def digits_convnet(norm_layer: Callable[[int], nn.Module], width: int = 8) -> nn.Sequential:
    """conv-norm-ReLU twice, global average pooling, linear: for 8x8 digit images, 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        norm_layer(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
        norm_layer(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 10),
    )


def load_digits_tensors(n_test: int = 297, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sklearn's 1797 8x8 digits as (x_train, y_train, x_test, y_test), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def train_switchable_digits(
    epochs: int = 5, batch_size: int = 32, lr: float = 0.01, width: int = 8, seed: int = 0
) -> tuple[nn.Module, dict]:
    """Train ``digits_convnet(SwitchableNorm2d)`` with Adam, logging the learned mixtures.

    Returns the model and a history: ``loss`` (mean training loss of each epoch),
    ``test_accuracy`` (before training, then after each epoch) and ``mixtures``, a tensor
    [steps + 1, layers, 2, 3] of every SN layer's (mean, var) softmax weights at every step.
    """
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_tensors(seed=seed)
    model = digits_convnet(SwitchableNorm2d, width)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    norms = [m for m in model.modules() if isinstance(m, SwitchableNorm2d)]
    generator = torch.Generator().manual_seed(seed)

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        model.train()
        return acc

    def mixtures() -> Tensor:
        return torch.stack(
            [torch.stack(m.mixture_weights()) for m in norms]
        ).detach()  # [layers, 2, 3]

    history = {"loss": [], "test_accuracy": [accuracy()], "mixtures": [mixtures()]}
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(y_train), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            history["mixtures"].append(mixtures())
        history["loss"].append(total / len(y_train))
        history["test_accuracy"].append(accuracy())
    history["mixtures"] = torch.stack(history["mixtures"])
    return model, history


def plot_mixtures(mixtures: Tensor, steps_per_epoch: int | None = None) -> Figure:
    """One panel per SN layer and statistic: the softmax weight of IN, LN and BN at every step."""
    import matplotlib.pyplot as plt

    n_layers = mixtures.shape[1]
    fig, axes = plt.subplots(
        n_layers, 2, figsize=(9, 2.6 * n_layers), sharex=True, sharey=True, squeeze=False
    )
    for layer in range(n_layers):
        for col, stat in enumerate(("mean", "variance")):
            ax = axes[layer, col]
            for k, name in enumerate(("IN", "LN", "BN")[: mixtures.shape[-1]]):
                ax.plot(mixtures[:, layer, col, k].numpy(), label=name)
            ax.axhline(1 / mixtures.shape[-1], color="grey", linestyle=":", linewidth=1)
            if steps_per_epoch:
                for x in range(steps_per_epoch, mixtures.shape[0], steps_per_epoch):
                    ax.axvline(x, color="grey", linewidth=0.3)
            ax.set_title(f"SN layer {layer + 1}: {stat} weights")
            ax.set_ylim(0, 1)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    axes[0, 0].legend(loc="upper left")
    fig.tight_layout()
    return fig
