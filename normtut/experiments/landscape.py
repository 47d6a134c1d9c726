"""A 1-D loss with a local and a global minimum, and SGD trajectories on it.

    f(x) = barrier * (x^2 - 1)^2 - tilt * (x^3 / 3 - x)

    f'(x) = (x^2 - 1) * (4 * barrier * x - tilt)

so the critical points are exactly x = -1 (the global minimum, f = -2 tilt / 3),
x = +1 (a local minimum, f = +2 tilt / 3) and the top of the hill between them at
x = tilt / (4 * barrier). A ball released on the right wall (x0 > 1) first meets the
local minimum; it reaches the global one only if it gets over the hill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from ..optim import SGD


def double_well(x: Tensor, barrier: float = 1.0, tilt: float = 0.5) -> Tensor:
    """f(x) = barrier * (x^2 - 1)^2 - tilt * (x^3/3 - x): local minimum at +1, global at -1."""
    return barrier * (x**2 - 1) ** 2 - tilt * (x**3 / 3 - x)


def hilltop(barrier: float = 1.0, tilt: float = 0.5) -> float:
    """Position of the local maximum between the two wells: x = tilt / (4 * barrier)."""
    return tilt / (4 * barrier)


def _lrs(lr: float | Sequence[float], steps: int) -> list[float]:
    return [float(lr)] * steps if isinstance(lr, (int, float)) else [float(v) for v in lr][:steps]


def trajectory(
    loss_fn: Callable[[Tensor], Tensor],
    x0: float | Sequence[float],
    lr: float | Sequence[float],
    momentum: float = 0.0,
    steps: int = 100,
    optimizer: type[torch.optim.Optimizer] = SGD,
    **kwargs,
) -> Tensor:
    """Positions x_0, x_1, ..., x_steps of SGD (momentum, float64) started at rest at ``x0``.

    ``lr`` is a number or one learning rate per step (a schedule). Returns a tensor of
    shape [steps + 1, *x0.shape]; a run that overflows ends with inf/nan entries.
    """
    lrs = _lrs(lr, steps)
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = optimizer([x], lr=lrs[0] if lrs else 0.0, momentum=momentum, **kwargs)
    path = [x.detach().clone()]
    for rate in lrs:
        opt.param_groups[0]["lr"] = rate
        opt.zero_grad()
        loss_fn(x).sum().backward()
        opt.step()
        path.append(x.detach().clone())
    return torch.stack(path)


def sutskever_trajectory(
    loss_fn: Callable[[Tensor], Tensor],
    x0: float | Sequence[float],
    lr: float | Sequence[float],
    momentum: float,
    steps: int = 100,
) -> Tensor:
    """Like ``trajectory`` with momentum, but with the learning rate inside the velocity.

    v_t = mu * v_{t-1} + lr_t * g_t,  x_t = x_{t-1} - v_t,  v_0 = 0  (Sutskever et al. 2013).
    """
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    v = torch.zeros_like(x)
    path = [x.detach().clone()]
    for rate in _lrs(lr, steps):
        (g,) = torch.autograd.grad(loss_fn(x).sum(), x)
        v = momentum * v + rate * g  # v_t = mu v_{t-1} + lr_t g_t
        with torch.no_grad():
            x -= v  # x_t = x_{t-1} - v_t
        path.append(x.detach().clone())
    return torch.stack(path)


def outcome(path: Tensor, barrier: float = 1.0, tilt: float = 0.5) -> str:
    """Where a 1-D double-well run ended: 'global', 'local' or 'diverged'.

    'global'/'local' means the final position lies on that side of the hilltop.
    """
    end = path[-1]
    if not torch.isfinite(end).all() or end.abs().max() > 1e6:
        return "diverged"
    return "global" if end.item() < hilltop(barrier, tilt) else "local"


def crossings(path: Tensor, barrier: float = 1.0, tilt: float = 0.5) -> int:
    """How many times a 1-D run crossed the hilltop (in either direction)."""
    side = path.flatten() < hilltop(barrier, tilt)
    return int((side[1:] != side[:-1]).sum())


def code(path: Tensor, barrier: float = 1.0, tilt: float = 0.5) -> str:
    """Short label of a 1-D run: 'D' if it diverged, else its final well + hilltop crossings.

    The well is 'G' (global) or 'L' (local): 'L3' ends in the local well after three crossings.
    """
    end = outcome(path, barrier, tilt)
    return "D" if end == "diverged" else f"{end[0].upper()}{crossings(path, barrier, tilt)}"


def escape_table(
    barriers: Sequence[float],
    starts: Sequence[float],
    lrs: Sequence[float],
    momenta: Sequence[float],
    tilt: float = 0.5,
    steps: int = 500,
) -> list[tuple[float, float, float, float, list[str]]]:
    """Run SGD on ``double_well`` for every (barrier, start, lr) and momentum.

    One row per (barrier, x0, lr): (barrier, x0, lr, f(x0) - f(hilltop), [code per momentum]).
    f(x0) - f(hilltop) > 0 means the ball starts higher than the top of the hill.
    """
    rows = []
    for b in barriers:
        f = partial(double_well, barrier=b, tilt=tilt)
        top = torch.tensor(hilltop(b, tilt), dtype=torch.float64)
        for x0 in starts:
            height = (f(torch.tensor(x0, dtype=torch.float64)) - f(top)).item()
            for lr in lrs:
                codes = [code(trajectory(f, x0, lr, mu, steps), b, tilt) for mu in momenta]
                rows.append((b, x0, lr, height, codes))
    return rows
