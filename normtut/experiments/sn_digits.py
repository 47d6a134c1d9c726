"""A small experiment: a tiny convnet with SwitchableNorm2d layers learns its mixtures on digits.

The digits split and training loop of ``digits`` (357 test images), Adam, CPU, a few
seconds: enough to watch the softmax weights of each layer leave 1/3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..switchnorm import SwitchableNorm2d
from . import digits


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


def sn_mixtures(model: nn.Module) -> Tensor:
    """The (mean, var) softmax weights of every SwitchableNorm2d in ``model``: [layers, 2, 3]."""
    norms = [m for m in model.modules() if isinstance(m, SwitchableNorm2d)]
    return torch.stack([torch.stack(m.mixture_weights()) for m in norms]).detach()


def train_switchable_digits(
    epochs: int = 5, batch_size: int = 32, lr: float = 0.01, width: int = 8, seed: int = 0
) -> tuple[nn.Module, dict]:
    """Train ``digits_convnet(SwitchableNorm2d)`` on ``digits.load_digits()`` with Adam.

    Returns the model and a history: ``loss`` (mean training loss of each epoch),
    ``test_accuracy`` (before training, then after each epoch) and ``mixtures``, a tensor
    [steps + 1, layers, 2, 3] of every SN layer's (mean, var) softmax weights at every step.
    """
    data = digits.load_digits()
    torch.manual_seed(seed)
    model = digits_convnet(SwitchableNorm2d, width)
    per_epoch = digits.steps_per_epoch(len(data.y_train), batch_size, drop_last=False)

    def accuracy() -> float:
        return 1 - digits.error(model, data.x_test, data.y_test) / 100

    history = {"test_accuracy": [accuracy()], "mixtures": [sn_mixtures(model)]}

    def after_step(step: int, loss: float) -> None:
        history["mixtures"].append(sn_mixtures(model))
        if step % per_epoch == 0:
            history["test_accuracy"].append(accuracy())

    losses = digits.train(
        model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        optimizer="adam", drop_last=False, after_step=after_step,
    )  # fmt: skip
    history["loss"] = [
        sum(losses[i : i + per_epoch]) / per_epoch for i in range(0, len(losses), per_epoch)
    ]
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
