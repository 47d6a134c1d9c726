"""normtut.optim.SGD against torch.optim.SGD."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from normtut.optim import SGD

STEPS = 50


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 5, dtype=torch.float64, generator=g)
    y = torch.randn(8, 3, dtype=torch.float64, generator=g)
    return ((model(x) - y) ** 2).mean()


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for t in steps:
        opt.zero_grad()
        loss = _loss(model, t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), (pa - pb).abs().max()


OPTIONS = [
    (mu, tau, wd, nesterov, maximize, tensor_lr)
    for mu, tau, wd, nesterov, maximize, tensor_lr in itertools.product(
        [0.0, 0.5, 0.9],  # momentum
        [0.0, 0.3],  # dampening
        [0.0, 0.01],  # weight_decay
        [False, True],  # nesterov
        [False, True],  # maximize
        [False, True],  # lr as a tensor
    )
    if not (nesterov and (mu == 0 or tau != 0))  # torch refuses these (see test_invalid_arguments)
]


@pytest.mark.parametrize("momentum,dampening,weight_decay,nesterov,maximize,tensor_lr", OPTIONS)
def test_matches_torch_over_many_steps(
    momentum, dampening, weight_decay, nesterov, maximize, tensor_lr
):
    lr = torch.tensor(0.05) if tensor_lr else 0.05
    kw = dict(
        lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov
    )
    ours, ref = _model(), _model()
    losses = _train(ours, SGD(ours.parameters(), **kw, maximize=maximize), range(STEPS))
    ref_losses = _train(
        ref, torch.optim.SGD(ref.parameters(), **kw, maximize=maximize), range(STEPS)
    )
    _assert_same(ours, ref)
    assert losses == ref_losses
    assert losses[0] != losses[-1]  # the parameters did move


def test_momentum_buffer_is_the_same_state():
    kw = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3)
    ours, ref = _model(), _model()
    o, r = SGD(ours.parameters(), **kw), torch.optim.SGD(ref.parameters(), **kw)
    _train(ours, o, range(5))
    _train(ref, r, range(5))
    so, sr = o.state_dict()["state"], r.state_dict()["state"]
    assert so.keys() == sr.keys()
    for k in so:
        assert so[k].keys() == sr[k].keys() == {"momentum_buffer"}
        assert torch.equal(so[k]["momentum_buffer"], sr[k]["momentum_buffer"])


def _invalid_cases():
    return [
        dict(lr=-0.1),
        dict(lr=torch.tensor(-0.1)),
        dict(lr=torch.tensor([0.1, 0.2])),
        dict(lr=torch.tensor([])),
        dict(lr=0.1, momentum=-0.5),
        dict(lr=0.1, weight_decay=-1e-4),
        dict(lr=0.1, nesterov=True),  # momentum 0
        dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
    ]


@pytest.mark.parametrize("kw", _invalid_cases())
def test_invalid_arguments(kw):
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(Exception) as theirs:
        torch.optim.SGD(p, **kw)
    with pytest.raises(type(theirs.value)) as ours:
        SGD(p, **kw)
    assert type(ours.value) is type(theirs.value) is ValueError
    assert str(ours.value) == str(theirs.value)


def test_accepted_edge_values_agree():
    """What torch accepts we accept: 1-element tensor lr of any rank, lr 0, dampening > 1."""
    for kw in (
        dict(lr=torch.tensor([[0.1]])),
        dict(lr=0.0),
        dict(lr=0.1, momentum=0.5, dampening=2.0),
    ):
        ours, ref = _model(), _model()
        _train(ours, SGD(ours.parameters(), **kw), range(3))
        _train(ref, torch.optim.SGD(ref.parameters(), **kw), range(3))
        _assert_same(ours, ref)


def test_no_params_is_rejected_like_torch():
    with pytest.raises(ValueError, match="empty parameter list"):
        torch.optim.SGD([])
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([])


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dict_interchange_mid_training(direction):
    kw = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    first_cls, second_cls = (
        (torch.optim.SGD, SGD) if direction == "torch_to_ours" else (SGD, torch.optim.SGD)
    )

    # Reference: torch alone for 20 steps.
    ref = _model()
    _train(ref, torch.optim.SGD(ref.parameters(), **kw), range(20))

    # 10 steps with one optimizer, hand its state_dict to a fresh one of the other kind.
    model = _model()
    first = first_cls(model.parameters(), **kw)
    _train(model, first, range(10))
    second = second_cls(model.parameters(), lr=1.0)  # hyper-parameters come from the state_dict
    second.load_state_dict(first.state_dict())
    assert second.param_groups[0]["lr"] == 0.05 and second.param_groups[0]["nesterov"] is True
    _train(model, second, range(10, 20))
    _assert_same(model, ref)


def test_param_groups_with_different_settings():
    def groups(m):
        return [
            {"params": m[0].parameters(), "lr": 0.1, "momentum": 0.9, "nesterov": True},
            {"params": m[2].weight, "momentum": 0.5, "dampening": 0.5, "weight_decay": 0.01},
            {"params": [m[2].bias], "lr": 0.2, "maximize": True},
        ]

    ours, ref = _model(), _model()
    o = SGD(groups(ours), lr=0.03)
    r = torch.optim.SGD(groups(ref), lr=0.03)
    _train(ours, o, range(STEPS))
    _train(ref, r, range(STEPS))
    _assert_same(ours, ref)
    for go, gr in zip(o.param_groups, r.param_groups, strict=True):
        for key in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"):
            assert go[key] == gr[key]


def test_add_param_group_and_lr_changes():
    ours, ref = _model(), _model()
    o = SGD(ours[0].parameters(), lr=0.1, momentum=0.9)
    r = torch.optim.SGD(ref[0].parameters(), lr=0.1, momentum=0.9)
    o.add_param_group({"params": ours[2].parameters(), "momentum": 0.0})
    r.add_param_group({"params": ref[2].parameters(), "momentum": 0.0})
    for t in range(30):
        if t == 15:  # a step schedule: lr drops mid-training
            for opt in (o, r):
                for g in opt.param_groups:
                    g["lr"] *= 0.1
        _train(ours, o, range(t, t + 1))
        _train(ref, r, range(t, t + 1))
    _assert_same(ours, ref)


def test_closure_is_called_and_its_loss_returned():
    ours, ref = _model(), _model()
    o, r = (
        SGD(ours.parameters(), lr=0.1, momentum=0.9),
        torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9),
    )
    for t in range(10):

        def closure(m=ours, opt=o, t=t):
            opt.zero_grad()
            loss = _loss(m, t)
            loss.backward()
            return loss

        def ref_closure(m=ref, opt=r, t=t):
            opt.zero_grad()
            loss = _loss(m, t)
            loss.backward()
            return loss

        with torch.no_grad():  # step() turns gradients back on for the closure, as torch does
            lo, lr_ = o.step(closure), r.step(ref_closure)
        assert lo.item() == lr_.item()
    _assert_same(ours, ref)
    assert o.step() is None


def test_params_without_grad_are_skipped():
    ours, ref = _model(), _model()
    for m in (ours, ref):
        m[2].bias.requires_grad_(False)  # never gets a .grad
    o = SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    r = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    before = ours[2].bias.clone()
    _train(ours, o, range(10))
    _train(ref, r, range(10))
    _assert_same(ours, ref)
    assert torch.equal(ours[2].bias, before)  # weight decay did not touch it either
    assert ours[2].bias not in o.state and ref[2].bias not in r.state


def test_is_a_torch_optimizer():
    p = [nn.Parameter(torch.ones(3))]
    o = SGD(p, lr=0.1)
    assert isinstance(o, torch.optim.Optimizer)
    p[0].grad = torch.ones(3)
    o.zero_grad()
    assert p[0].grad is None  # zero_grad(set_to_none=True) from the base class
