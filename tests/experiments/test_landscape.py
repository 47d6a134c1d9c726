"""The double-well loss and the trajectory runners, against torch.optim.SGD and autograd."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from normtut.experiments.landscape import (
    crossings,
    double_well,
    hilltop,
    outcome,
    sutskever_trajectory,
    trajectory,
)
from normtut.optim import SGD


def _grad(f, x: float) -> float:
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    f(t).backward()
    return t.grad.item()


@pytest.mark.parametrize("barrier,tilt", [(1.0, 0.5), (0.5, 0.3), (2.0, 1.0)])
def test_double_well_critical_points(barrier, tilt):
    f = partial(double_well, barrier=barrier, tilt=tilt)
    top = hilltop(barrier, tilt)
    for x in (-1.0, 1.0, top):  # f'(x) = (x^2 - 1)(4 b x - t) vanishes here
        assert abs(_grad(f, x)) < 1e-12
    for x in (-2.0, -0.3, 0.7, 1.7):
        assert _grad(f, x) == pytest.approx((x * x - 1) * (4 * barrier * x - tilt), rel=1e-12)
    v = {x: f(torch.tensor(x, dtype=torch.float64)).item() for x in (-1.0, 1.0, top)}
    assert v[-1.0] < v[1.0] < v[top]  # global minimum, local minimum, hilltop
    assert v[-1.0] == pytest.approx(-2 * tilt / 3) and v[1.0] == pytest.approx(2 * tilt / 3)


def _torch_run(f, x0, lrs, momentum, **kw):
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lrs[0], momentum=momentum, **kw)
    path = [x.detach().clone()]
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        f(x).sum().backward()
        opt.step()
        path.append(x.detach().clone())
    return torch.stack(path)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_trajectory_is_torch_sgd(momentum):
    f = partial(double_well, barrier=1.0, tilt=0.5)
    path = trajectory(f, 2.0, 0.01, momentum, steps=200)
    assert path.shape == (201,)
    assert torch.equal(path, _torch_run(f, 2.0, [0.01] * 200, momentum))
    assert torch.equal(
        path, trajectory(f, 2.0, 0.01, momentum, steps=200, optimizer=torch.optim.SGD)
    )


def test_trajectory_with_schedule_and_2d_start():
    def bowl(x):
        return (x * torch.tensor([1.0, 10.0], dtype=torch.float64) * x).sum()

    lrs = [0.05] * 10 + [0.005] * 10
    path = trajectory(bowl, [1.0, -2.0], lrs, 0.9, steps=20, nesterov=True)
    assert path.shape == (21, 2)
    assert torch.equal(path, _torch_run(bowl, [1.0, -2.0], lrs, 0.9, nesterov=True))


def test_sutskever_equals_torch_form_for_constant_lr():
    f = partial(double_well, barrier=1.0, tilt=0.5)
    a = sutskever_trajectory(f, 2.0, 0.01, 0.9, steps=300)
    b = _torch_run(f, 2.0, [0.01] * 300, 0.9)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_sutskever_with_schedule_is_torch_with_rescaled_buffer():
    """v = lr * b while lr is constant; when lr changes, torch's b would need rescaling by lr_old / lr_new."""
    f = partial(double_well, barrier=1.0, tilt=0.5)
    lrs = [0.01] * 5 + [0.001] * 50 + [0.004] * 50
    ours = sutskever_trajectory(f, 2.0, lrs, 0.9, steps=len(lrs))

    x = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lrs[0], momentum=0.9)
    path, prev = [x.detach().clone()], lrs[0]
    for lr in lrs:
        if x in opt.state:
            opt.state[x]["momentum_buffer"].mul_(prev / lr)
        opt.param_groups[0]["lr"] = prev = lr
        opt.zero_grad()
        f(x).backward()
        opt.step()
        path.append(x.detach().clone())
    torch.testing.assert_close(ours, torch.stack(path), rtol=0, atol=1e-12)
    # ... and without the rescaling the two forms part ways.
    assert (ours - trajectory(f, 2.0, lrs, 0.9, steps=len(lrs))).abs().max() > 0.1


def test_outcome_and_crossings():
    top = hilltop(1.0, 0.5)
    assert top == 0.125
    path = torch.tensor([2.0, 0.5, 0.1, -1.0, 0.2, -0.9], dtype=torch.float64)
    assert crossings(path) == 3  # 0.5 -> 0.1, -1.0 -> 0.2, 0.2 -> -0.9
    assert outcome(path) == "global"
    assert outcome(path[:-1]) == "local"
    assert outcome(torch.tensor([2.0, float("nan")])) == "diverged"
    assert outcome(torch.tensor([2.0, float("inf")])) == "diverged"
    # A real run: plain gradient descent from x0 = 2 with a small lr stays in the local well.
    assert outcome(trajectory(double_well, 2.0, 0.01, 0.0, steps=300)) == "local"


def test_optimizer_argument_is_used():
    f = partial(double_well, barrier=1.0, tilt=0.5)
    assert torch.equal(
        trajectory(f, 1.5, 0.02, 0.9, steps=50, optimizer=SGD, dampening=0.5),
        _torch_run(f, 1.5, [0.02] * 50, 0.9, dampening=0.5),
    )
