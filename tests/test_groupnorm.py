"""GroupNorm and functional.group_norm against torch.nn.GroupNorm / F.group_norm, and the
equivalences GroupNorm(C, C) = InstanceNorm and GroupNorm(1, C) = LayerNorm checked on torch's layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from twins import (
    F32,
    F64,
    assert_same_state,
    check_large_offset,
    check_low_precision,
    forward_backward,
    gradcheck_inputs,
    params,
    randomize,
    same_error,
    step,
    twins,
)

import normtut
from normtut import functional as F

GN = (nn.GroupNorm, normtut.GroupNorm)


# --- construction -----------------------------------------------------------------------


def test_signatures():
    assert params(normtut.GroupNorm) == params(nn.GroupNorm)
    assert params(F.group_norm) == params(TF.group_norm)


@pytest.mark.parametrize(
    "args, kwargs",
    [((2, 4), {}), ((3, 6, 1e-3), {}), ((3, 6, 1e-5, False), {}), ((1, 5), {"bias": False}),
     ((4, 4), {"dtype": torch.float64, "device": "cpu"}), ((2, 4), {"affine": False, "bias": False})],
)  # fmt: skip
def test_construction_repr_state(args, kwargs):
    ours, ref = normtut.GroupNorm(*args, **kwargs), nn.GroupNorm(*args, **kwargs)
    for name in ("num_groups", "num_channels", "eps", "affine"):
        assert getattr(ours, name) == getattr(ref, name), name
    assert repr(ours) == repr(ref)
    assert_same_state(ours, ref)
    assert list(ours.named_buffers()) == list(ref.named_buffers()) == []


def test_bias_is_keyword_only():
    for cls in (normtut.GroupNorm, nn.GroupNorm):
        with pytest.raises(TypeError):
            cls(2, 4, 1e-5, True, None, None, False)


@pytest.mark.parametrize("num_groups, num_channels", [(4, 6), (5, 3), (4, 2)])
def test_groups_not_dividing_channels(num_groups, num_channels):
    with pytest.raises(ValueError, match="divisible"):
        normtut.GroupNorm(num_groups, num_channels)
    with pytest.raises(ValueError):
        nn.GroupNorm(num_groups, num_channels)


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"affine": False}])
def test_state_dict_both_ways(kwargs):
    torch.manual_seed(0)
    ours, ref = twins(GN, 2, 6, **kwargs)
    fresh = normtut.GroupNorm(2, 6, **kwargs)
    fresh.load_state_dict(ref.state_dict())
    assert_same_state(fresh, ref)
    back = nn.GroupNorm(2, 6, **kwargs)
    back.load_state_dict(ours.state_dict())
    assert_same_state(back, ours)
    with pytest.raises(RuntimeError, match="size mismatch"):  # channels differ: both refuse
        normtut.GroupNorm(2, 4).load_state_dict(nn.GroupNorm(2, 6).state_dict())
    with pytest.raises(RuntimeError, match="size mismatch"):
        nn.GroupNorm(2, 4).load_state_dict(normtut.GroupNorm(2, 6).state_dict())


# --- forward and backward -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 6), (3, 6, 7), (2, 6, 4, 5), (2, 6, 3, 2, 4)])
@pytest.mark.parametrize("num_groups", [1, 2, 3, 6])
@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"affine": False}, {"eps": 0.1}])
def test_forward_backward_match_torch(shape, num_groups, kwargs):
    """In float64: with two values per group float32 gradients are mostly cancellation noise."""
    torch.manual_seed(0)
    ours, ref = twins(GN, num_groups, 6, dtype=torch.float64, **kwargs)
    if shape == (3, 6) and num_groups == 6:
        shape = (3, 6, 2)  # (N, C) with one channel per group is one value per group: tested below
    opt_a, opt_b = (
        (torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, ref))
        if ours.affine
        else (None, None)
    )
    for i in range(3):  # a few optimizer steps; train and eval are the same for GN
        ours.train(i != 1)
        ref.train(i != 1)
        step(ours, ref, torch.randn(shape, dtype=torch.float64) * (i + 1) + i, **F64)
        if opt_a is not None:
            opt_a.step()
            opt_b.step()
            opt_a.zero_grad()
            opt_b.zero_grad()
    assert_same_state(ours, ref)


@pytest.mark.parametrize("num_groups", [1, 2, 4])
def test_float32(num_groups):
    torch.manual_seed(0)
    ours, ref = twins(GN, num_groups, 8)
    step(ours, ref, torch.randn(4, 8, 6, 5) * 2 + 1, **F32)


def test_functional_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 5, dtype=torch.float64) * 2 + 1
    w, b = torch.rand(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    for args in [(3,), (2, w, b), (6, None, b), (1, w, None, 0.5)]:
        torch.testing.assert_close(F.group_norm(x, *args), TF.group_norm(x, *args), **F64)


# --- exceptions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, exc",
    [
        ((torch.randn(2, 6, 4), 4), RuntimeError),  # 4 groups do not divide 6 channels
        ((torch.randn(6), 2), RuntimeError),  # 1-D input
        ((torch.tensor(1.0), 1), RuntimeError),
        ((torch.randn(2, 6, 4), -3), RuntimeError),
        ((torch.randn(2, 6, 4), 3, torch.ones(3)), RuntimeError),  # weight of the wrong shape
        ((torch.randn(2, 6, 4), 3, torch.ones(2, 3)), RuntimeError),
        ((torch.randn(2, 6, 4), 3, None, torch.ones(4)), RuntimeError),
        ((torch.randn(1, 3), 3), ValueError),  # one value per group
        ((torch.randn(1, 3, 1, 1), 3), ValueError),
        ((torch.randn(2, 6, 4).double(), 3, torch.ones(6)), RuntimeError),  # mixed dtypes
        ((torch.randn(2, 6, 4), 3, torch.ones(6).half()), RuntimeError),
        ((torch.randn(2, 6, 4).half(), 3, torch.ones(6), torch.ones(6).half()), RuntimeError),
        ((torch.ones(2, 6, 4, dtype=torch.long), 3), NotImplementedError),
    ],
)
def test_functional_errors(args, exc):
    same_error(lambda: F.group_norm(*args), lambda: TF.group_norm(*args), exc)


def test_functional_groups_not_dividing_channels_says_so():
    x = torch.randn(2, 6, 4)
    same_error(
        lambda: F.group_norm(x, 4),
        lambda: TF.group_norm(x, 4),
        RuntimeError,
        match="divisible by num_groups",
    )


def test_module_errors():
    ours, ref = twins(GN, 2, 6)
    for x, exc in [
        (torch.randn(2, 4, 5), RuntimeError),
        (torch.randn(6), RuntimeError),
        (torch.randn(1, 6, 1), None),
    ]:
        if exc is None:  # 6 channels in 2 groups: three values per group, fine
            step(ours, ref, x, **F32)
        else:
            same_error(lambda x=x: ours(x), lambda x=x: ref(x), exc)
    ours, ref = twins(GN, 3, 3)
    x = torch.randn(1, 3)
    same_error(lambda: ours(x), lambda: ref(x), ValueError)


# --- edge cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 6, 4), (0, 6), (2, 6, 0), (2, 6, 0, 3)])
def test_zero_size_inputs(shape):
    """With no spatial values the weight gradient is NaN in both: sum(dy * x_hat) is
    rstd * sum(dy * (x - mean)) = 1/sqrt(var of nothing) * 0."""
    torch.manual_seed(0)
    ours, ref = twins(GN, 3, 6)
    step(ours, ref, torch.randn(shape), equal_nan=True)


def test_zero_channels():
    ours, ref = twins(GN, 3, 0)
    step(ours, ref, torch.randn(2, 0, 4))


def test_large_offset_is_stable():
    torch.manual_seed(0)
    check_large_offset(F.group_norm, TF.group_norm, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("param_dtype", ["same", "float32"])
def test_low_precision(dtype, param_dtype):
    """Computed in float32, returned in the input dtype; torch has CPU half/bfloat16 kernels for GN."""
    torch.manual_seed(0)
    ours, ref = twins(GN, 2, 4, dtype=dtype if param_dtype == "same" else torch.float32)
    check_low_precision(ours, ref, nn.GroupNorm(2, 4), dtype)


# --- equivalences, checked on torch's layers --------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 4, 7), (3, 4, 5, 6), (2, 4, 3, 2, 3)])
def test_one_channel_per_group_is_instance_norm(shape):
    """GroupNorm(C, C) = InstanceNorm with affine=True (InstanceNorm's default has no affine)."""
    torch.manual_seed(0)
    C, d = shape[1], len(shape) - 2
    torch_in = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[d]
    our_in = {1: normtut.InstanceNorm1d, 2: normtut.InstanceNorm2d, 3: normtut.InstanceNorm3d}[d]
    gn, tin = normtut.GroupNorm(C, C), torch_in(C, affine=True)
    randomize(gn, tin)
    step(gn, tin, torch.randn(shape) * 2 + 1, **F32)
    tgn, oin = nn.GroupNorm(C, C, affine=False), our_in(C)  # and the other way round, no affine
    step(oin, tgn, torch.randn(shape) * 2 + 1, **F32)


@pytest.mark.parametrize("shape", [(2, 4, 7), (3, 4, 5, 6), (2, 4, 3, 2, 3)])
def test_one_group_is_layer_norm_over_channels_and_space(shape):
    """GroupNorm(1, C) = LayerNorm(shape[1:]) whose elementwise affine is constant per channel."""
    torch.manual_seed(0)
    C, rest = shape[1], shape[1:]
    gn, tln = normtut.GroupNorm(1, C), nn.LayerNorm(rest)
    randomize(gn)
    per_channel = (C,) + (1,) * (len(rest) - 1)
    with torch.no_grad():
        tln.weight.copy_(gn.weight.reshape(per_channel).expand(rest))
        tln.bias.copy_(gn.bias.reshape(per_channel).expand(rest))
    forward_backward(gn, tln, torch.randn(shape) * 2 + 1, **F32)
    dims = tuple(range(1, len(rest)))  # a per-channel gradient sums the per-element ones
    torch.testing.assert_close(gn.weight.grad, tln.weight.grad.sum(dims), **F32)
    torch.testing.assert_close(gn.bias.grad, tln.bias.grad.sum(dims), **F32)
    tgn, oln = nn.GroupNorm(1, C, affine=False), normtut.LayerNorm(rest, elementwise_affine=False)
    step(oln, tgn, torch.randn(shape) * 2 + 1, **F32)


# --- properties and gradients ---------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 3),
    groups=st.integers(1, 4),
    per_group=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    affine=st.booleans(),
    bias=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_matches_torch(n, groups, per_group, spatial, affine, bias, eps, seed):
    if n * per_group * torch.Size(spatial).numel() == 1:
        per_group = 2  # one value per group is an error, tested above
    torch.manual_seed(seed)
    C = groups * per_group
    ours, ref = twins(GN, groups, C, eps=eps, affine=affine, bias=bias, dtype=torch.float64)
    step(ours, ref, torch.randn(n, C, *spatial, dtype=torch.float64) * 3 + 1, **F64)


@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck(affine):
    torch.manual_seed(0)
    x, w, b = gradcheck_inputs((2, 6, 4), (6,))
    if affine:
        assert torch.autograd.gradcheck(lambda x, w, b: F.group_norm(x, 3, w, b), (x, w, b))
        assert torch.autograd.gradgradcheck(lambda x, w, b: F.group_norm(x, 3, w, b), (x, w, b))
    else:
        assert torch.autograd.gradcheck(lambda x: F.group_norm(x, 2, eps=1e-3), (x,))
