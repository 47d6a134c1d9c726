"""LeNet with every norm behaves like the same network built from torch.nn's layers; SwitchableNorm1d's mixtures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normtut.experiments.models import GN_MAX_GROUPS, NORM_SLOTS, NORMS, LeNet, SwitchableNorm1d
from normtut.factory import group_norm_groups

# short name -> (torch layer after a conv, torch layer after a linear), both C -> module
TORCH_TWINS = {
    "none": (lambda C: nn.Identity(), lambda C: nn.Identity()),
    "bn": (nn.BatchNorm2d, nn.BatchNorm1d),
    "gn": (
        lambda C: nn.GroupNorm(group_norm_groups(C, GN_MAX_GROUPS), C),
        lambda C: nn.GroupNorm(group_norm_groups(C, GN_MAX_GROUPS), C),
    ),
    "ln": (lambda C: nn.GroupNorm(1, C), nn.LayerNorm),
    "in": (
        lambda C: nn.InstanceNorm2d(C, affine=False, track_running_stats=False),
        lambda C: nn.Identity(),
    ),
}


def seed_002_concise() -> nn.Sequential:
    """Seed 002's concise LeNet, verbatim, with torch's own layers (28x28 inputs)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6),
        nn.Sigmoid(), nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16),
        nn.Sigmoid(), nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.Linear(256, 120), nn.BatchNorm1d(120),
        nn.Sigmoid(), nn.Linear(120, 84), nn.BatchNorm1d(84),
        nn.Sigmoid(), nn.Linear(84, 10),
    )  # fmt: skip


@pytest.mark.parametrize("norm", list(NORMS) + list(NORMS.values()))
@pytest.mark.parametrize("in_size", [28, 8])
def test_builds_and_runs_with_every_norm(norm, in_size):
    torch.manual_seed(0)
    net = LeNet(norm, in_size=in_size)
    assert len(net) == 16 and net.norm == norm and net.in_size == in_size
    assert net[9].in_features == (256 if in_size == 28 else 64)
    assert set(net.norm_layers()) == set(NORM_SLOTS)
    head = net[:9]  # slicing gives a plain Sequential sharing the layers
    assert type(head) is nn.Sequential and head[0] is net[0] and len(head) == 9
    for mode in (True, False):
        out = net.train(mode)(torch.randn(3, 1, in_size, in_size))
        assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_matches_seed_002_concise_lenet_with_torch_layers():
    """LeNet('bn') draws the same weights as seed 002's nn.Sequential and computes the same, step after step."""
    torch.manual_seed(0)
    ours = LeNet("bn").double()
    torch.manual_seed(0)
    seed = seed_002_concise().double()
    assert ours.state_dict().keys() == seed.state_dict().keys()
    for (k, a), b in zip(ours.state_dict().items(), seed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9) for m in (ours, seed)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(4, 1, 28, 28, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (4,), generator=gen)
        for model, opt in zip((ours, seed), opts, strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model.train()(x), y).backward()
            opt.step()
    for (k, a), b in zip(ours.state_dict().items(), seed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=k)
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(ours.eval()(x), seed.eval()(x), rtol=1e-9, atol=1e-12)


def test_norm_overrides_build_the_seed_layout():
    """norm2d/norm1d put any layer in the four slots, e.g. torch's own BatchNorm for the seed's concise net."""
    net = LeNet(norm2d=nn.BatchNorm2d, norm1d=nn.BatchNorm1d)
    assert [type(m) for m in net] == [type(m) for m in seed_002_concise()]


@pytest.mark.parametrize("norm", sorted(TORCH_TWINS))
def test_every_norm_matches_its_torch_twin(norm):
    """For each norm the network equals the one built from torch.nn's layers, in train and eval mode."""
    twin2d, twin1d = TORCH_TWINS[norm]
    torch.manual_seed(0)
    ours = LeNet(norm, in_size=8, activation=nn.ReLU).double()
    torch.manual_seed(0)
    ref = LeNet(norm, in_size=8, activation=nn.ReLU, norm2d=twin2d, norm1d=twin1d).double()
    for name in NORM_SLOTS:
        assert type(ours[int(name)]).__name__ == type(ref[int(name)]).__name__
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    for mode in (True, False):
        out, expected = ours.train(mode)(x), ref.train(mode)(x)
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
        out.sum().backward()
        expected.sum().backward()
    for (k, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10, msg=k)
    torch.testing.assert_close(ours.state_dict(), ref.state_dict(), rtol=1e-9, atol=1e-12)


def test_padding_and_errors():
    assert LeNet(in_size=28)[0].padding == (0, 0) and LeNet(in_size=8)[0].padding == (2, 2)
    assert LeNet(in_size=28, padding=2)[9].in_features == 16 * 7 * 7  # 28 -> 28 -> 14 -> 14 -> 7
    assert LeNet(in_size=32, in_channels=3, num_classes=7)(torch.randn(2, 3, 32, 32)).shape == (
        2,
        7,
    )
    with pytest.raises(ValueError, match="too small"):
        LeNet(in_size=3)
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'"):
        LeNet("batchnorm")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        LeNet("bn").train()(torch.randn(1, 1, 28, 28))  # torch's BatchNorm1d raises the same


def one_hot(layer: SwitchableNorm1d, branch: str) -> SwitchableNorm1d:
    with torch.no_grad():
        logits = torch.full((2,), -math.inf, dtype=layer.mean_weight.dtype)
        logits[layer.branches.index(branch)] = 0.0
        layer.mean_weight.copy_(logits)
        layer.var_weight.copy_(logits)
    return layer


def test_switchable_norm_1d_bn_branch_is_batchnorm1d():
    torch.manual_seed(0)
    sn = one_hot(SwitchableNorm1d(5, momentum=0.3).double(), "bn")
    bn = nn.BatchNorm1d(5, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        sn.weight.copy_(bn.weight)
        sn.bias.copy_(bn.bias)
    for _ in range(3):
        x = torch.randn(4, 5, dtype=torch.float64) * 3 + 1
        torch.testing.assert_close(sn.train()(x), bn.train()(x), rtol=1e-9, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(sn, name), getattr(bn, name), rtol=1e-12, atol=1e-14)
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(sn.eval()(x), bn.eval()(x), rtol=1e-9, atol=1e-12)


def test_switchable_norm_1d_ln_branch_is_layernorm():
    sn = one_hot(SwitchableNorm1d(6).double(), "ln")
    ln = nn.LayerNorm(6).double()
    x = torch.randn(3, 6, dtype=torch.float64) * 2 - 1
    for mode in (True, False):
        torch.testing.assert_close(sn.train(mode)(x), ln(x), rtol=1e-9, atol=1e-12)


def test_switchable_norm_1d_mixes_the_two():
    """Equal logits: the mean and variance are halfway between LN's and BN's (torch.var_mean computes both)."""
    sn = SwitchableNorm1d(4).double().train()
    x = torch.randn(5, 4, dtype=torch.float64)
    var_ln, mean_ln = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
    var_bn, mean_bn = torch.var_mean(x, dim=0, keepdim=True, unbiased=False)
    mean, var = (mean_ln + mean_bn) / 2, (var_ln + var_bn) / 2
    torch.testing.assert_close(sn(x), (x - mean) / torch.sqrt(var + sn.eps), rtol=1e-9, atol=1e-12)
    out = sn(x)
    out.pow(2).sum().backward()
    assert sn.mean_weight.grad is not None and sn.var_weight.grad.abs().sum() > 0


def test_switchable_norm_1d_errors():
    sn = SwitchableNorm1d(4)
    with pytest.raises(ValueError, match="expected 2D input"):
        sn(torch.randn(2, 4, 3))
    with pytest.raises(RuntimeError, match="expected input with 4 channels"):
        sn(torch.randn(2, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        sn.train()(torch.randn(1, 4))
    sn.eval()(torch.randn(1, 4))  # one sample is fine in eval mode, as for BatchNorm1d
