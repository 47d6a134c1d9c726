"""RMSNorm and functional.rms_norm against torch.nn.RMSNorm / F.rms_norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch_inputs import module_inputs, sample_ids
from twins import F32, F64, assert_same_state, params, randomize, step, twins

import normtut
from normtut import functional as F

pytestmark = pytest.mark.usefixtures("one_thread")

RMS = (nn.RMSNorm, normtut.RMSNorm)


def test_signatures():
    assert params(normtut.RMSNorm) == params(nn.RMSNorm)
    assert params(F.rms_norm) == params(TF.rms_norm)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((5,), {}),
        (([3, 4],), {"eps": 1e-3}),
        ((torch.Size([2, 3]),), {"elementwise_affine": False}),
        ((4, 1e-6, True), {"dtype": torch.float64, "device": "cpu"}),
    ],
)
def test_construction_repr_state(args, kwargs):
    ours, ref = normtut.RMSNorm(*args, **kwargs), nn.RMSNorm(*args, **kwargs)
    assert repr(ours) == repr(ref)
    assert ours.normalized_shape == ref.normalized_shape and ours.eps == ref.eps
    assert_same_state(ours, ref)
    assert list(ours._parameters) == list(ref._parameters) == ["weight"]  # no bias slot at all
    assert not hasattr(ours, "bias") and not hasattr(ref, "bias")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("desc", sample_ids(nn.RMSNorm))
def test_torch_module_db_inputs(desc, training):
    """torch's own samples for nn.RMSNorm, in float64 and float32."""
    for dtype, tol in ((torch.float64, F64), (torch.float32, F32)):
        sample = [
            s for s in module_inputs(nn.RMSNorm, dtype, training) if (s[0] or "default") == desc
        ]
        _, args, kwargs, (x,), _ = sample[0]
        ours, ref = twins(RMS, *args, **kwargs)
        ours.to(dtype).train(training)
        ref.to(dtype).train(training)
        step(ours, ref, x.detach(), **tol)


@pytest.mark.parametrize("elementwise_affine", [True, False])
@pytest.mark.parametrize("eps", [None, 1e-6, 0.5])
@pytest.mark.parametrize("shape, normalized_shape", [((4, 6), [6]), ((2, 3, 4, 5), [4, 5])])
def test_forward_backward_and_sgd_steps(shape, normalized_shape, eps, elementwise_affine):
    torch.manual_seed(0)
    ours, ref = twins(RMS, normalized_shape, eps, elementwise_affine)
    opts = (
        [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, ref)] if elementwise_affine else []
    )
    for i in range(3):
        step(ours, ref, torch.randn(shape) * (i + 1) + i, **F32)
        for opt in opts:
            opt.step()
            opt.zero_grad()
    assert_same_state(ours, ref)


def test_functional_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64) * 2 + 1
    w = torch.rand(4, 5, dtype=torch.float64)
    for args in [([5],), ((4, 5), w), (torch.Size([4, 5]), w, 0.5), ([4, 5], None, 1e-3)]:
        torch.testing.assert_close(F.rms_norm(x, *args), TF.rms_norm(x, *args), **F64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_default_eps_is_that_of_the_compute_dtype(dtype):
    """eps=None is float32's epsilon (1.2e-7) for float16/bfloat16/float32 inputs, not the
    input dtype's (float16: 9.8e-4, bfloat16: 7.8e-3): visible on inputs of RMS ~ 1e-2."""
    x = torch.full((2, 8), 1e-2, dtype=dtype)
    ours, theirs = F.rms_norm(x, [8]), TF.rms_norm(x, [8])
    assert ours.dtype == dtype
    assert torch.equal(ours, theirs)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    expected = x.to(compute) / torch.sqrt(x.to(compute) ** 2 + torch.finfo(compute).eps)
    torch.testing.assert_close(ours, expected.to(dtype), rtol=0, atol=0)
    if dtype in (torch.float16, torch.bfloat16):  # the input dtype's eps would give far less
        smaller = x.float() / torch.sqrt(x.float() ** 2 + torch.finfo(dtype).eps)
        assert (smaller < 0.5).all() and (ours > 0.99).all()


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("weight_dtype", ["same", torch.float32, torch.float64])
def test_low_precision_rounded_once(dtype, weight_dtype):
    """Computed in float32 (with the weight in its own dtype), rounded once to the input dtype."""
    torch.manual_seed(0)
    wd = dtype if weight_dtype == "same" else weight_dtype
    w = (torch.rand(6) + 0.5).to(wd)
    x = (torch.randn(4, 5, 6) * 3 + 1).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = F.rms_norm(xa, [6], w), TF.rms_norm(xb, [6], w)
    assert ya.dtype == yb.dtype == dtype
    if wd != dtype:  # torch's composite path (no fused kernel): the same operations, same bits
        assert torch.equal(ya, yb)
    tol = {"rtol": 2e-3, "atol": 2e-3} if dtype == torch.float16 else {"rtol": 1.6e-2, "atol": 1e-2}
    torch.testing.assert_close(ya, yb, **tol)
    g = torch.randn(x.shape).to(dtype)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_weight_of_another_dtype_and_complex_input():
    torch.manual_seed(0)
    x = torch.randn(3, 5)
    for w in (torch.rand(5, dtype=torch.float64), torch.ones(5, dtype=torch.long)):
        torch.testing.assert_close(F.rms_norm(x, [5], w), TF.rms_norm(x, [5], w))
    z = torch.randn(3, 5, dtype=torch.complex128)
    ours, theirs = (
        F.rms_norm(z, [5]),
        TF.rms_norm(z, [5]),
    )  # torch's formula: mean of x^2, not |x|^2
    assert ours.dtype == theirs.dtype == torch.complex128
    torch.testing.assert_close(ours, theirs, **F64)


LAYOUTS = {
    "contiguous": lambda x: x,
    "channels_last": lambda x: x.to(memory_format=torch.channels_last),
    "permuted": lambda x: x.permute(0, 2, 1, 3),
    "transposed_last": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),
    "expanded": lambda x: x[:1].expand(3, -1, -1, -1),
    "strided": lambda x: torch.randn(3, 4, 5, 12)[..., ::2],
    "channels_last_C1": lambda x: x[:, :1].contiguous(memory_format=torch.channels_last),
    "channels_last_3d": lambda x: x.unsqueeze(2).to(memory_format=torch.channels_last_3d),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_memory_layout_is_torchs(layout):
    """torch keeps a channels-last layout and makes everything else contiguous."""
    torch.manual_seed(0)
    x = LAYOUTS[layout](torch.randn(3, 4, 5, 6))
    ours, theirs = F.rms_norm(x, [x.shape[-1]]), TF.rms_norm(x, [x.shape[-1]])
    assert ours.stride() == theirs.stride()  # so .view() works on ours where it does on torch's
    torch.testing.assert_close(ours, theirs)


def test_zero_rows_and_eps_zero_like_torch():
    x = torch.zeros(2, 4)
    x[1] = torch.arange(4.0)
    for eps in (None, 0.0, 1e-3):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = F.rms_norm(xa, [4], eps=eps), TF.rms_norm(xb, [4], eps=eps)
        torch.testing.assert_close(ya, yb, equal_nan=True)
        ya.sum().backward()
        yb.sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, equal_nan=True)


@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_gradgradcheck(affine):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 4, dtype=torch.float64, requires_grad=True) if affine else None
    inputs = (x, w) if affine else (x,)

    def f(*t):
        return F.rms_norm(t[0], [2, 4], t[1] if affine else None, 1e-3)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_state_dict_both_ways_and_empty_batch():
    torch.manual_seed(0)
    ours, ref = twins(RMS, [3, 4])
    fresh, back = normtut.RMSNorm([3, 4]), nn.RMSNorm([3, 4])
    fresh.load_state_dict(ref.state_dict())
    back.load_state_dict(ours.state_dict())
    assert_same_state(fresh, ref)
    assert_same_state(back, ours)
    step(ours, ref, torch.randn(0, 3, 4))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    k=st.integers(1, 4),
    eps=st.sampled_from([None, 1e-5, 0.1]),
    affine=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_matches_torch(shape, k, eps, affine, seed):
    k = min(k, len(shape))
    torch.manual_seed(seed)
    ours, ref = twins(RMS, shape[len(shape) - k :], eps, affine, dtype=torch.float64)
    randomize(ours, ref)
    step(ours, ref, torch.randn(shape, dtype=torch.float64) * 2 + 0.5, **F64)
