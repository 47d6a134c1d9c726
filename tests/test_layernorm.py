"""LayerNorm and functional.layer_norm against torch.nn.LayerNorm / F.layer_norm."""

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
    gradcheck_inputs,
    params,
    same_error,
    step,
    twins,
)

import normtut
from normtut import functional as F

LN = (nn.LayerNorm, normtut.LayerNorm)


# --- construction -----------------------------------------------------------------------


def test_signatures():
    assert params(normtut.LayerNorm) == params(nn.LayerNorm)
    assert params(F.layer_norm) == params(TF.layer_norm)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((5,), {}),
        (([3, 4],), {}),
        (((3, 4),), {"eps": 1e-3}),
        ((torch.Size([2, 3, 4]),), {}),
        ((4, 1e-6, False), {}),  # positional eps, elementwise_affine
        ((4, 1e-5, True, False), {}),  # positional bias
        ((4,), {"bias": False, "dtype": torch.float64, "device": "cpu"}),
        (([2, 2],), {"elementwise_affine": False, "bias": False}),
    ],
)
def test_construction_repr_state(args, kwargs):
    ours, ref = normtut.LayerNorm(*args, **kwargs), nn.LayerNorm(*args, **kwargs)
    assert ours.normalized_shape == ref.normalized_shape and isinstance(
        ours.normalized_shape, tuple
    )
    assert (ours.eps, ours.elementwise_affine) == (ref.eps, ref.elementwise_affine)
    assert repr(ours) == repr(ref)
    assert_same_state(ours, ref)
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()] == []


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"elementwise_affine": False}])
def test_state_dict_both_ways(kwargs):
    torch.manual_seed(0)
    ours, ref = twins(LN, [3, 4], **kwargs)
    fresh = normtut.LayerNorm([3, 4], **kwargs)
    fresh.load_state_dict(ref.state_dict())
    assert_same_state(fresh, ref)
    back = nn.LayerNorm([3, 4], **kwargs)
    back.load_state_dict(ours.state_dict())
    assert_same_state(back, ours)
    if kwargs:  # a dict with a bias cannot go into a layer without one, in either library
        full = nn.LayerNorm([3, 4]).state_dict()
        for m in (normtut.LayerNorm([3, 4], **kwargs), nn.LayerNorm([3, 4], **kwargs)):
            with pytest.raises(RuntimeError, match="Unexpected key"):
                m.load_state_dict(full)


# --- forward and backward -------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, normalized_shape",
    [
        ((4, 10), 10),
        ((2, 5, 8), [8]),
        ((2, 5, 8), [5, 8]),
        ((2, 3, 4, 5), (3, 4, 5)),
        ((6,), [6]),
        ((2, 3, 1), [1]),
    ],
)
@pytest.mark.parametrize(
    "kwargs", [{}, {"bias": False}, {"elementwise_affine": False}, {"eps": 0.1}]
)
def test_forward_backward_match_torch(shape, normalized_shape, kwargs):
    torch.manual_seed(0)
    ours, ref = twins(LN, normalized_shape, **kwargs)
    affine = ours.weight is not None
    opt_a, opt_b = (
        (torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, ref)) if affine else (None, None)
    )
    # With one value per sample x_hat = 0 and the true input gradient is 0: ours is exactly 0,
    # torch's float32 backward leaves rounding noise of order 1e-7 / sqrt(eps).
    tol = F32 if shape[-1] > 1 else {"rtol": 1e-4, "atol": 1e-3}
    for i in range(3):  # a few optimizer steps, so the affine moves away from its init
        step(ours, ref, torch.randn(shape) * (i + 1) + i, **tol)
        if opt_a is not None:
            opt_a.step()
            opt_b.step()
            opt_a.zero_grad()
            opt_b.zero_grad()
    assert_same_state(ours, ref)


def test_functional_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64) * 2 + 1
    w, b = torch.rand(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    for args in [([5],), ((4, 5), w, b), (torch.Size([4, 5]), w), ([4, 5], None, b, 0.5)]:
        torch.testing.assert_close(F.layer_norm(x, *args), TF.layer_norm(x, *args), **F64)


def test_train_and_eval_are_the_same():
    torch.manual_seed(0)
    ours, ref = twins(LN, [6])
    x = torch.randn(4, 6)
    ya = ours(x)
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x), ya)
    torch.testing.assert_close(ya, ref(x), **F32)


# --- exceptions ---------------------------------------------------------------------------


MISMATCHED = [((2, 3, 4), [3]), ((2, 3, 4), [4, 3]), ((3, 4), [2, 3, 4]), ((4,), 5)]


@pytest.mark.parametrize("shape, normalized_shape", MISMATCHED)
def test_trailing_shape_mismatch(shape, normalized_shape):
    ours, ref = twins(LN, normalized_shape)
    x = torch.randn(shape)
    same_error(lambda: ours(x), lambda: ref(x), RuntimeError)


@pytest.mark.parametrize(
    "args, exc",
    [
        ((torch.randn(3, 4), [4], torch.ones(3)), RuntimeError),  # weight of the wrong shape
        ((torch.randn(3, 4), [4], torch.ones(1, 4)), RuntimeError),
        ((torch.randn(3, 4), [4], None, torch.ones(5)), RuntimeError),
        ((torch.randn(3, 4), []), RuntimeError),  # nothing to normalize over
        ((torch.randn(3, 4), [3]), RuntimeError),
        ((torch.randn(3, 4).double(), [4], torch.ones(4)), RuntimeError),  # mixed dtypes
        ((torch.randn(3, 4), [4], torch.ones(4).half()), RuntimeError),
        ((torch.randn(3, 4).half(), [4], torch.ones(4), torch.ones(4).half()), RuntimeError),
        ((torch.ones(3, 4, dtype=torch.long), [4]), NotImplementedError),
        ((torch.randn(3, 4), 4), TypeError),  # the functional wants a sequence
    ],
)
def test_functional_errors(args, exc):
    same_error(lambda: F.layer_norm(*args), lambda: TF.layer_norm(*args), exc)


def test_module_weight_of_wrong_shape():
    ours, ref = twins(LN, [4])
    with torch.no_grad():
        ours.weight = nn.Parameter(torch.ones(3))
        ref.weight = nn.Parameter(torch.ones(3))
    x = torch.randn(2, 4)
    same_error(lambda: ours(x), lambda: ref(x), RuntimeError)


# --- edge cases ---------------------------------------------------------------------------


EMPTY = [((0, 4), [4]), ((0, 3, 4), [3, 4]), ((2, 0), [0]), ((2, 3, 0), [3, 0])]


@pytest.mark.parametrize("shape, normalized_shape", EMPTY)
def test_zero_size_inputs(shape, normalized_shape):
    ours, ref = twins(LN, normalized_shape)
    step(ours, ref, torch.randn(shape))


def test_large_offset_is_stable():
    torch.manual_seed(0)
    check_large_offset(F.layer_norm, TF.layer_norm, [6, 64])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("param_dtype", ["same", "float32"])
def test_low_precision(dtype, param_dtype):
    """Computed in float32, returned in the input dtype; torch has CPU half/bfloat16 kernels for LN."""
    torch.manual_seed(0)
    ours, ref = twins(LN, [5, 6], dtype=dtype if param_dtype == "same" else torch.float32)
    check_low_precision(ours, ref, nn.LayerNorm([5, 6]), dtype)


# --- properties and gradients ---------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    k=st.integers(1, 4),
    elementwise_affine=st.booleans(),
    bias=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3, 0.5]),
    as_int=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_matches_torch(shape, k, elementwise_affine, bias, eps, as_int, seed):
    k = min(k, len(shape))
    normalized_shape = shape[len(shape) - k :]
    if as_int and k == 1:
        normalized_shape = normalized_shape[0]
    torch.manual_seed(seed)
    kw = {
        "eps": eps,
        "elementwise_affine": elementwise_affine,
        "bias": bias,
        "dtype": torch.float64,
    }
    ours, ref = twins(LN, normalized_shape, **kw)
    step(ours, ref, torch.randn(shape, dtype=torch.float64) * 3 + 1, **F64)


@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck(affine):
    torch.manual_seed(0)
    x, w, b = gradcheck_inputs((2, 3, 4), (3, 4))
    if affine:
        assert torch.autograd.gradcheck(lambda x, w, b: F.layer_norm(x, [3, 4], w, b), (x, w, b))
        assert torch.autograd.gradgradcheck(
            lambda x, w, b: F.layer_norm(x, [3, 4], w, b), (x, w, b)
        )
    else:
        assert torch.autograd.gradcheck(lambda x: F.layer_norm(x, [4], eps=1e-3), (x,))
