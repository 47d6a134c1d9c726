"""Why BatchNorm helps: the same LeNet with and without BatchNorm, on the digits.

Every run uses the split and the loop of ``digits`` (357 test images): SGD with rho = 0.9
at a constant learning rate, batches of 32, a few epochs, one CPU thread. The variants:

    none      LeNet without normalization (``nn.Identity`` in its four norm slots)
    bn        BatchNorm after both convolutions and both hidden linear layers
    noisy bn  bn, each BatchNorm followed by a ``Wobble``: a random shift and scale of
              every unit, redrawn at every step (an artificial internal covariate shift)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..batchnorm import BatchNorm1d, BatchNorm2d
from . import digits
from .layer_stats import Point, Snapshots
from .models import LeNet

VARIANTS = ("none", "bn", "noisy bn")
LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
SEEDS = (0, 1)
EPOCHS = 6
BATCH_SIZE = 32
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess among 10 classes


class Wobble(nn.Module):
    """In training, ``x * scale + shift`` per unit (dim 1); in eval, the identity.

    ``redraw`` draws new values: shift uniform in [-max_shift, max_shift], scale
    log-uniform between 1 / max_scale and max_scale. Until then they stay, so every
    forward pass of one training step sees the same shift.
    """

    def __init__(self, num_features: int, max_shift: float = 0.5, max_scale: float = 1.5) -> None:
        super().__init__()
        self.max_shift, self.max_scale = max_shift, max_scale
        self.register_buffer("shift", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))

    def redraw(self, generator: torch.Generator) -> None:
        """New shift and scale for every unit."""
        u = torch.rand(2, len(self.shift), generator=generator) * 2 - 1  # uniform in [-1, 1]
        self.shift.copy_(u[0] * self.max_shift)
        self.scale.copy_(torch.exp(u[1] * math.log(self.max_scale)))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast over N and the spatial axes
        return x * self.scale.view(shape) + self.shift.view(shape)


def lenet(
    variant: str, seed: int, dropout: float = 0.0, wobble: tuple[float, float] = (0.5, 1.5)
) -> LeNet:
    """``digits.lenet`` for a variant of ``VARIANTS``; ``dropout`` after every activation.

    ``wobble``: (max_shift, max_scale) of the ``Wobble`` layers of 'noisy bn'.
    """
    options: dict = {}
    if dropout:
        options["activation"] = lambda: nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
    if variant == "noisy bn":
        options["norm2d"] = lambda c: nn.Sequential(BatchNorm2d(c), Wobble(c, *wobble))
        options["norm1d"] = lambda c: nn.Sequential(BatchNorm1d(c), Wobble(c, *wobble))
        variant = "bn"
    if variant not in ("none", "bn"):
        raise ValueError(f"unknown variant {variant!r}; valid names: {', '.join(VARIANTS)}")
    return digits.lenet(variant, seed, **options)


@dataclass
class Run:
    """One training run: the loss of every step and the final errors (%, eval mode)."""

    variant: str
    lr: float
    seed: int
    losses: list[float]
    steps_per_epoch: int
    train_error: float
    test_error: float
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def final_loss(self) -> float:
        """Mean training loss of the last epoch (inf if the loss diverged)."""
        last = self.losses[-self.steps_per_epoch :]
        return sum(last) / len(last) if all(map(math.isfinite, last)) else math.inf


def train_run(
    variant: str,
    lr: float,
    seed: int,
    data: digits.Digits,
    epochs: int = EPOCHS,
    dropout: float = 0.0,
    wobble: tuple[float, float] = (0.5, 1.5),
    watch: Callable[[nn.Module], digits.AfterStep] | None = None,
) -> Run:
    """Train ``lenet(variant, seed, dropout, wobble)`` with SGD at a constant ``lr``; test it.

    ``watch(model)``, if given, is called once the model is built and returns an
    ``after_step`` hook (e.g. ``layer_stats.Snapshots``).
    """
    model = lenet(variant, seed, dropout, wobble)
    after_step = watch(model) if watch is not None else None
    wobbles = [m for m in model.modules() if isinstance(m, Wobble)]
    generator = torch.Generator().manual_seed(seed)  # the noise of noisy bn
    for w in wobbles:
        w.redraw(generator)

    def step_done(step: int, loss: float) -> None:
        for w in wobbles:
            w.redraw(generator)  # a new shift for the next step
        if after_step is not None:
            after_step(step, loss)

    losses = digits.train(
        model, data, epochs=epochs, batch_size=BATCH_SIZE, lr=lr, seed=seed, after_step=step_done
    )
    per_epoch = digits.steps_per_epoch(len(data.y_train), BATCH_SIZE)
    if not math.isfinite(losses[-1]):  # diverged: the weights hold inf or NaN
        return Run(variant, lr, seed, losses, per_epoch, math.nan, math.nan, model)
    with digits.one_thread():
        train_error = digits.error(model, data.x_train, data.y_train)
        test_error = digits.error(model, data.x_test, data.y_test)
    return Run(variant, lr, seed, losses, per_epoch, train_error, test_error, model)


def watched_run(
    variant: str, lr: float, seed: int, data: digits.Digits, points: Mapping[str, Point]
) -> tuple[Run, Snapshots]:
    """``train_run`` with ``Snapshots`` of ``points`` on the first 256 training images."""
    watched: list[Snapshots] = []

    def watch(model: nn.Module) -> Snapshots:
        watched.append(Snapshots(model, data.x_train[:256], points))
        return watched[0]

    return train_run(variant, lr, seed, data, watch=watch), watched[0]


def lr_sweep(
    variants: Sequence[str] = ("none", "bn"),
    lrs: Sequence[float] = LRS,
    seeds: Sequence[int] = SEEDS,
    data: digits.Digits | None = None,
    epochs: int = EPOCHS,
) -> list[Run]:
    """One run per (variant, learning rate, seed)."""
    data = digits.load_digits() if data is None else data
    return [train_run(v, lr, s, data, epochs) for v in variants for lr in lrs for s in seeds]


def mean_over_seeds(runs: Sequence[Run], attribute: str) -> dict[tuple[str, float], float]:
    """(variant, lr) -> the mean of ``attribute`` (e.g. 'final_loss') over the seeds."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in runs:
        groups.setdefault((r.variant, r.lr), []).append(getattr(r, attribute))
    return {key: statistics.mean(values) for key, values in groups.items()}


def sweep_table(runs: Sequence[Run]) -> str:
    """Final-epoch training loss and test error (%) per learning rate, means over seeds."""
    loss, error = mean_over_seeds(runs, "final_loss"), mean_over_seeds(runs, "test_error")
    variants = list(dict.fromkeys(r.variant for r in runs))
    seeds = ", ".join(str(s) for s in sorted({r.seed for r in runs}))
    lines = [f"last-epoch training loss / test error (%), means over seeds {seeds}"]
    lines.append("lr     " + "".join(f"{v:>18}" for v in variants))
    for lr in sorted({r.lr for r in runs}):
        cells = [f"{loss[v, lr]:.3f} / {error[v, lr]:5.1f}" for v in variants]
        lines.append(f"{lr:<7g}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def smooth(losses: Sequence[float], width: int = 15) -> Tensor:
    """Moving average over ``width`` steps (the first points average what there is)."""
    x = torch.tensor(losses, dtype=torch.float64).nan_to_num(nan=math.inf)
    cumulative = torch.cat([torch.zeros(1, dtype=x.dtype), x.cumsum(0)])
    steps = torch.arange(1, len(x) + 1)
    start = (steps - width).clamp(min=0)
    return (cumulative[steps] - cumulative[start]) / (steps - start)


def plot_losses(runs: Sequence[Run], seed: int = 0) -> Figure:
    """Training loss against epochs, one panel per variant, one line per learning rate."""
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r.variant for r in runs))
    fig, axes = plt.subplots(
        1, len(variants), figsize=(4.6 * len(variants), 3.6), sharey=True, squeeze=False
    )
    lrs = sorted({r.lr for r in runs})
    colors = plt.cm.viridis([i / max(len(lrs) - 1, 1) for i in range(len(lrs))])
    for ax, variant in zip(axes[0], variants, strict=True):
        for lr, color in zip(lrs, colors, strict=True):
            (run,) = [r for r in runs if r.variant == variant and r.lr == lr and r.seed == seed]
            epochs = torch.arange(1, len(run.losses) + 1) / run.steps_per_epoch
            loss = smooth(run.losses).clamp(max=10)  # a diverged run leaves the plot at the top
            ax.plot(epochs, loss, color=color, label=f"lr {lr:g}")
        ax.axhline(CHANCE_LOSS, color="grey", linestyle=":", linewidth=1)  # a uniform guess
        ax.set_yscale("log")
        ax.set_title(f"{variant}, seed {seed}")
        ax.set_xlabel("epoch")
    axes[0, 0].set_ylabel("training loss (moving average, log scale)")
    axes[0, -1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig
