"""What a hidden layer sees during training: snapshots on a fixed probe batch, and their drift.

``Snapshots`` is an ``after_step`` hook for ``digits.train``: every few steps it feeds the
same probe images through a copy of the model and keeps the values at chosen points
(a module's input or output), one row per probe image, one column per unit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

Point = tuple[int, str]  # (index of a module in an nn.Sequential, "input" or "output")


class Snapshots:
    """Every ``every`` steps, the values at ``points`` of ``model`` for the ``probe`` images.

    The probe runs on a copy of the model in training mode, so BatchNorm normalizes with the
    probe's own batch statistics, as in training, and the model's running statistics are
    untouched. The first snapshot (step 0) is taken at construction, before training.
    """

    def __init__(
        self, model: nn.Sequential, probe: Tensor, points: Mapping[str, Point], every: int = 5
    ) -> None:
        self.model, self.probe, self.points, self.every = model, probe, dict(points), every
        self.steps: list[int] = []
        self.values: dict[str, list[Tensor]] = {name: [] for name in self.points}
        self(0, math.nan)

    @torch.no_grad()
    def __call__(self, step: int, loss: float) -> None:
        if step % self.every:
            return
        twin = copy.deepcopy(self.model).train()
        seen: dict[str, Tensor] = {}
        for name, (index, where) in self.points.items():
            twin[index].register_forward_hook(
                lambda module, args, out, name=name, where=where: seen.__setitem__(
                    name, args[0] if where == "input" else out
                )
            )
        twin(self.probe)
        self.steps.append(step)
        for name in self.points:
            self.values[name].append(
                seen[name].flatten(2).mean(2) if seen[name].dim() > 2 else seen[name]
            )

    def stacked(self) -> dict[str, Tensor]:
        """name -> tensor [snapshots, probe images, units] (conv maps averaged over H, W)."""
        return {name: torch.stack(v) for name, v in self.values.items()}


def unit_moments(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (biased) standard deviation of every unit over the probe: two [snapshots, units]."""
    mean = values.mean(1)
    std = ((values - mean.unsqueeze(1)) ** 2).mean(1).sqrt()  # sqrt(1/n sum (v - mean)^2)
    return mean, std


def _median(x: Tensor) -> float:
    """Median that skips units without a spread to measure against (dead units: 0 / 0)."""
    return torch.nanmedian(x.masked_fill(~torch.isfinite(x), math.nan)).item()


def drift(values: Tensor) -> tuple[float, float]:
    """How far the units moved from the first snapshot to the last, medians over the units.

    Returns (|mean_last - mean_first| / std_first, std_last / std_first).
    """
    mean, std = unit_moments(values)
    return _median((mean[-1] - mean[0]).abs() / std[0]), _median(std[-1] / std[0])


def jump(values: Tensor) -> float:
    """Median over units and snapshots of |mean_t - mean_(t-1)| / std_(t-1)."""
    mean, std = unit_moments(values)
    return _median((mean[1:] - mean[:-1]).abs() / std[:-1])


def plot_percentiles(
    panels: Mapping[str, tuple[list[int], Tensor]], unit: int = 0, steps_per_epoch: int = 45
) -> Figure:
    """One panel per entry (title -> (steps, values)): unit ``unit``'s 15th, 50th and 85th
    percentile over the probe images, against training time."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False)
    q = torch.tensor([0.15, 0.5, 0.85])
    for ax, (title, (steps, values)) in zip(axes[0], panels.items(), strict=True):
        low, mid, high = values[:, :, unit].quantile(q, dim=1)
        epochs = torch.tensor(steps) / steps_per_epoch
        ax.fill_between(epochs, low, high, alpha=0.3, label="15th-85th percentile")
        ax.plot(epochs, mid, label="median")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0, 0].set_ylabel(f"unit {unit}'s value on the probe images")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig
