"""SwitchableNorm2d against torch: one-hot mixtures are InstanceNorm2d, GroupNorm(1, C), BatchNorm2d."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from twins import forward_backward

from normtut import SwitchableNorm1d, SwitchableNorm2d

TOL = {"rtol": 1e-10, "atol": 1e-12}


def torch_twin(branch: str, C: int, **kw) -> nn.Module:
    """The torch layer a one-hot SN on ``branch`` must reproduce."""
    if branch == "in":
        return nn.InstanceNorm2d(C, affine=True, **kw)
    if branch == "ln":
        return nn.GroupNorm(1, C, **kw)
    return nn.BatchNorm2d(C, **kw)


def reference_sn(x, mean_logits, var_logits, weight, bias, eps, running=None):
    """SN written with torch.var_mean over each branch's own axes (no shared formulas with normtut)."""
    var_in, mean_in = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=False)
    var_ln, mean_ln = torch.var_mean(x, dim=(1, 2, 3), keepdim=True, unbiased=False)
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    if len(mean_logits) == 3:
        if running is None:
            var_bn, mean_bn = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, unbiased=False)
        else:
            mean_bn, var_bn = (r.reshape(1, -1, 1, 1) for r in running)
        means.append(mean_bn)
        variances.append(var_bn)
    wm, wv = torch.softmax(mean_logits, 0), torch.softmax(var_logits, 0)
    mean = sum(w * m for w, m in zip(wm, means, strict=True))
    var = sum(w * v for w, v in zip(wv, variances, strict=True))
    return (x - mean) / torch.sqrt(var + eps) * weight.reshape(1, -1, 1, 1) + bias.reshape(
        1, -1, 1, 1
    )


def randomize_affine(*modules: nn.Module) -> None:
    w, b = (
        torch.randn(modules[0].weight.shape, dtype=torch.float64),
        torch.randn(modules[0].bias.shape, dtype=torch.float64),
    )
    with torch.no_grad():
        for m in modules:
            m.weight.copy_(w)
            m.bias.copy_(b)


def batch(N=4, C=6, H=5, W=3) -> torch.Tensor:
    return (torch.randn(N, C, H, W, dtype=torch.float64) * 3 + 2).requires_grad_()


@pytest.mark.parametrize("branch", ["in", "ln", "bn"])
def test_softmax_of_use_only_is_exactly_one_hot(branch):
    sn = SwitchableNorm2d(3).use_only_(branch)
    expected = torch.zeros(3)
    expected[["in", "ln", "bn"].index(branch)] = 1.0
    for w in sn.mixture_weights():
        assert torch.equal(w.detach(), expected)


@pytest.mark.parametrize("branch", ["in", "ln", "bn"])
def test_one_hot_matches_torch_in_train_and_eval(branch):
    torch.manual_seed(0)
    C = 6
    sn = SwitchableNorm2d(C).double().use_only_(branch)
    ref = torch_twin(branch, C).double()
    randomize_affine(sn, ref)
    for step in range(4):  # several steps, so the running buffers are exercised
        forward_backward(sn, ref, batch(C=C).detach(), **TOL)
        torch.testing.assert_close(sn.weight.grad, ref.weight.grad, **TOL)
        torch.testing.assert_close(sn.bias.grad, ref.bias.grad, **TOL)
        for m in (sn, ref):
            m.zero_grad()
        if branch == "bn":
            torch.testing.assert_close(sn.running_mean, ref.running_mean, **TOL)
            torch.testing.assert_close(sn.running_var, ref.running_var, **TOL)
            assert int(sn.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
    sn.eval()
    ref.eval()
    x1 = batch(N=2, C=C)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = sn(x1), ref(x2)
    torch.testing.assert_close(y1, y2, **TOL)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)


def test_cumulative_average_is_batchnorm_momentum_none():
    torch.manual_seed(1)
    sn = SwitchableNorm2d(5, using_moving_average=False).double().use_only_("bn")
    ref = nn.BatchNorm2d(5, momentum=None).double()
    batches = [batch(N=3, C=5).detach() for _ in range(5)]
    for x in batches:
        torch.testing.assert_close(sn(x), ref(x), **TOL)
    torch.testing.assert_close(sn.running_mean, ref.running_mean, **TOL)
    torch.testing.assert_close(sn.running_var, ref.running_var, **TOL)
    # the running mean is the plain average of the batch means: the official "batch average" mode
    torch.testing.assert_close(
        sn.running_mean, torch.stack([x.mean((0, 2, 3)) for x in batches]).mean(0), **TOL
    )
    sn.eval()
    ref.eval()
    x = batch(N=2, C=5).detach()
    torch.testing.assert_close(sn(x), ref(x), **TOL)


def test_empty_batch_like_batchnorm():
    sn, bn = (
        SwitchableNorm2d(3, using_moving_average=False).use_only_("bn"),
        nn.BatchNorm2d(3, momentum=None),
    )
    for x in (torch.randn(4, 3, 2, 2), torch.randn(0, 3, 2, 2), torch.randn(4, 3, 2, 2)):
        assert sn(x).shape == bn(x).shape
    assert int(sn.num_batches_tracked) == int(bn.num_batches_tracked) == 3
    torch.testing.assert_close(sn.running_mean, bn.running_mean)
    torch.testing.assert_close(sn.running_var, bn.running_var)


def test_cumulative_average_ignores_momentum():
    torch.manual_seed(2)
    a = SwitchableNorm2d(3, momentum=0.5, using_moving_average=False).double()
    b = SwitchableNorm2d(3, momentum=0.9, using_moving_average=False).double()
    for _ in range(3):
        x = batch(C=3).detach()
        a(x)
        b(x)
    torch.testing.assert_close(a.running_var, b.running_var, **TOL)


@settings(max_examples=25, deadline=None)
@given(
    N=st.integers(2, 4),
    C=st.integers(1, 5),
    H=st.integers(1, 4),
    W=st.integers(2, 4),
    using_bn=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_generic_mixture_matches_reference(N, C, H, W, using_bn, seed):
    torch.manual_seed(seed)
    sn = SwitchableNorm2d(C, using_bn=using_bn).double()
    with torch.no_grad():
        sn.mean_weight.normal_()
        sn.var_weight.normal_()
    randomize_affine(sn)
    x1 = batch(N, C, H, W)
    x2 = x1.detach().clone().requires_grad_()
    logits = [p.detach().clone().requires_grad_() for p in (sn.mean_weight, sn.var_weight)]
    y1 = sn(x1)
    y2 = reference_sn(x2, *logits, sn.weight.detach(), sn.bias.detach(), sn.eps)
    torch.testing.assert_close(y1, y2, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(sn.mean_weight.grad, logits[0].grad, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(sn.var_weight.grad, logits[1].grad, rtol=1e-8, atol=1e-9)
    if using_bn:  # eval: the BN branch switches to the running buffers
        sn.eval()
        running = (sn.running_mean, sn.running_var)
        x = batch(N, C, H, W).detach()
        y = reference_sn(x, *logits, sn.weight.detach(), sn.bias.detach(), sn.eps, running)
        torch.testing.assert_close(sn(x), y.detach(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("using_bn", [True, False])
def test_gradients_reach_every_mixture_logit(using_bn):
    torch.manual_seed(3)
    sn = SwitchableNorm2d(4, using_bn=using_bn).double()
    randomize_affine(sn)
    y = sn(batch(C=4))
    (y * torch.randn_like(y)).sum().backward()
    for p in (sn.mean_weight, sn.var_weight):
        assert p.grad is not None and p.grad.shape == (3 if using_bn else 2,)
        assert (p.grad.abs() > 1e-8).all(), p.grad


@pytest.mark.parametrize("branch", ["in", "ln"])
def test_without_bn_two_logits_no_buffers_and_one_hot(branch):
    torch.manual_seed(4)
    sn = SwitchableNorm2d(6, using_bn=False).double().use_only_(branch)
    assert sn.mean_weight.shape == sn.var_weight.shape == (2,)
    assert sn.running_mean is None and sn.running_var is None and sn.num_batches_tracked is None
    assert sorted(sn.state_dict()) == ["bias", "mean_weight", "var_weight", "weight"]
    ref = torch_twin(branch, 6).double()
    randomize_affine(sn, ref)
    x = batch(C=6).detach()
    torch.testing.assert_close(sn(x), ref(x), **TOL)
    sn.eval()
    ref.eval()
    torch.testing.assert_close(sn(x), ref(x), **TOL)
    with pytest.raises(ValueError, match="branch must be one of"):
        sn.use_only_("bn")


def test_without_bn_needs_no_batch_and_train_equals_eval():
    sn = SwitchableNorm2d(3, using_bn=False).double()
    x = batch(N=1, C=3).detach()
    y_train = sn(x)
    sn.eval()
    torch.testing.assert_close(sn(x), y_train, rtol=0, atol=0)


def test_last_gamma_starts_weight_at_zero():
    sn = SwitchableNorm2d(4, last_gamma=True)
    assert torch.equal(sn.weight.detach(), torch.zeros(4))
    with torch.no_grad():
        sn.bias.copy_(torch.arange(4.0))
    y = sn(torch.randn(2, 4, 3, 3))
    torch.testing.assert_close(
        y, torch.arange(4.0).reshape(1, 4, 1, 1).expand(2, 4, 3, 3), rtol=0, atol=0
    )
    sn.weight.data.fill_(5)
    sn.reset_parameters()
    assert torch.equal(sn.weight.detach(), torch.zeros(4))
    assert torch.equal(SwitchableNorm2d(4).weight.detach(), torch.ones(4))


def test_initial_state_like_batchnorm():
    sn, bn = SwitchableNorm2d(5), nn.BatchNorm2d(5)
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(sn, name), getattr(bn, name)
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.detach(), b.detach()), (
            name
        )
    for w in sn.mixture_weights():
        torch.testing.assert_close(w.detach(), torch.full((3,), 1 / 3))


def test_state_dict_round_trip():
    torch.manual_seed(5)
    sn = SwitchableNorm2d(4).double()
    with torch.no_grad():
        sn.mean_weight.normal_()
        sn.var_weight.normal_()
    randomize_affine(sn)
    for _ in range(3):
        sn(batch(C=4).detach())
    state = sn.state_dict()
    keys_bn = set(nn.BatchNorm2d(4).state_dict())
    assert set(state) == keys_bn | {"mean_weight", "var_weight"}
    fresh = SwitchableNorm2d(4).double()
    fresh.load_state_dict(state)
    for name, t in state.items():
        assert torch.equal(fresh.state_dict()[name], t), name
    sn.eval()
    fresh.eval()
    x = batch(C=4).detach()
    assert torch.equal(fresh(x), sn(x))


def test_errors_like_batchnorm():
    sn, bn = SwitchableNorm2d(3), nn.BatchNorm2d(3)
    for shape in [(2, 3, 4), (2, 3, 4, 4, 1)]:
        x = torch.randn(shape)
        with pytest.raises(ValueError) as theirs:
            bn(x)
        with pytest.raises(ValueError) as ours:
            sn(x)
        assert str(ours.value) == str(theirs.value)
    x = torch.randn(1, 3, 1, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        sn(x)
    sn.eval()
    bn.eval()
    torch.testing.assert_close(sn.use_only_("bn")(x), bn(x))  # eval needs no batch statistics
    with pytest.raises(RuntimeError):
        bn(torch.randn(2, 4, 3, 3))
    with pytest.raises(RuntimeError, match="expected input with 3 channels"):
        sn(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="branch must be one of"):
        sn.use_only_("gn")


def test_repr():
    assert repr(SwitchableNorm2d(8, momentum=0.2, using_bn=False, last_gamma=True)) == (
        "SwitchableNorm2d(8, eps=1e-05, momentum=0.2, using_moving_average=True, using_bn=False, last_gamma=True)"
    )


def test_float32_input_and_module_move_together():
    torch.manual_seed(6)
    sn, bn = SwitchableNorm2d(3).use_only_("bn"), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(sn(x), bn(x))
    with pytest.raises(RuntimeError, match="mixed dtypes"):
        sn(x.double())


# --- one-hot layers compute only their branch ----------------------------------------------


@pytest.mark.parametrize(
    "branch, bad",
    [
        *[(b, float("nan")) for b in ("in", "ln", "bn")],
        ("in", float("inf")),
        ("ln", float("inf")),
        ("bn", float("inf")),
    ],
)
def test_one_hot_keeps_a_bad_value_where_its_twin_keeps_it(branch, bad):
    """One NaN/inf in sample 0: IN and GroupNorm(1, C) keep it in sample 0 (and a one-hot IN/LN
    layer leaves the running buffers alone); BatchNorm spreads it over the channel, as torch."""
    torch.manual_seed(7)
    C = 3
    sn = SwitchableNorm2d(C).double().use_only_(branch)
    ref = torch_twin(branch, C).double()
    randomize_affine(sn, ref)
    x = batch(N=3, C=C).detach()
    x[0, 1, 2, 1] = bad
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = sn(xa), ref(xb)
    torch.testing.assert_close(ya, yb, equal_nan=True, **TOL)
    ya.backward(torch.ones_like(ya))
    yb.backward(torch.ones_like(yb))
    torch.testing.assert_close(xa.grad, xb.grad, equal_nan=True, **TOL)
    if branch != "bn":
        assert torch.isfinite(ya[1:]).all() and torch.isfinite(xa.grad[1:]).all()
        assert torch.equal(sn.running_mean, torch.zeros(C, dtype=torch.float64))
        assert torch.equal(sn.running_var, torch.ones(C, dtype=torch.float64))
        assert int(sn.num_batches_tracked) == 0  # the BN branch did not run
    else:
        torch.testing.assert_close(sn.running_mean, ref.running_mean, equal_nan=True, **TOL)


@pytest.mark.parametrize("training", [True, False])
def test_one_hot_checks_are_the_twins(training):
    """One-hot IN on 1x1 maps raises like InstanceNorm2d, one-hot LN on a single value like
    GroupNorm(1, C), in both modes (both twins use the input's own statistics in eval too)."""
    cases = {"in": torch.randn(4, 3, 1, 1), "ln": torch.randn(1, 1, 1, 1)}
    for branch, x in cases.items():
        C = x.shape[1]
        sn, ref = SwitchableNorm2d(C).use_only_(branch).train(training), torch_twin(branch, C)
        ref.train(training)
        with pytest.raises(ValueError) as theirs:
            ref(x)
        with pytest.raises(ValueError) as ours:
            sn(x)
        assert str(ours.value) == str(theirs.value)
    # a one-hot IN layer needs no second sample: N = 1 is fine where BN's check would fail
    sn = SwitchableNorm2d(3).use_only_("in").train(training)
    torch.testing.assert_close(sn(cases["in"][:1].expand(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))


def test_load_state_dict_and_reset_set_the_one_hot_branch():
    sn = SwitchableNorm2d(3).use_only_("ln")
    assert sn.only == "ln"
    fresh = SwitchableNorm2d(3)
    assert fresh.only is None
    fresh.load_state_dict(sn.state_dict())
    assert fresh.only == "ln"
    x = batch(C=3).detach().float()
    torch.testing.assert_close(fresh(x), sn(x), rtol=0, atol=0)
    sn.load_state_dict(SwitchableNorm2d(3).state_dict())  # equal logits: the mixture again
    assert sn.only is None
    fresh.reset_parameters()
    assert fresh.only is None


@pytest.mark.parametrize("branch", ["ln", "bn"])
def test_one_hot_1d_matches_its_twin(branch):
    torch.manual_seed(8)
    sn = SwitchableNorm1d(5).double().use_only_(branch)
    ref = (nn.GroupNorm(1, 5) if branch == "ln" else nn.BatchNorm1d(5)).double()
    randomize_affine(sn, ref)
    x = torch.randn(6, 5, dtype=torch.float64) * 2 + 1
    x[2, 3] = float("nan")
    for training in (True, False):
        sn.train(training)
        ref.train(training)
        torch.testing.assert_close(sn(x), ref(x), equal_nan=True, **TOL)
    if branch == "ln":
        assert int(sn.num_batches_tracked) == 0
