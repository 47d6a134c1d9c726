"""functional.normalize against torch.nn.functional.normalize: v / max(||v||_p, eps)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from twins import F64, params

from normtut import functional as F

pytestmark = pytest.mark.usefixtures("one_thread")

P = [2.0, 1, 3, 0.5, 1.5, -1.0, 0, math.inf, -math.inf, None, "fro"]


def test_signature():
    assert params(F.normalize) == params(TF.normalize)


def _both(x, *args, **kwargs):
    """Forward and backward (a random output gradient) through ours and torch's."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = F.normalize(xa, *args, **kwargs), TF.normalize(xb, *args, **kwargs)
    assert ya.dtype == yb.dtype and ya.shape == yb.shape and ya.stride() == yb.stride()
    g = torch.randn(ya.shape, dtype=ya.real.dtype).to(ya.dtype)
    ya.backward(g)
    yb.backward(g)
    return (ya, xa.grad), (yb, xb.grad)


@pytest.mark.parametrize("p", P)
@pytest.mark.parametrize("dim", [1, 0, -1, (1, 2), [0, 2], None])
def test_values_and_gradients_match_torch(p, dim):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    x[0, :, 0] = 0.0  # some all-zero vectors: the norm is 0 there
    x[1, 2] = 0.0
    ours, theirs = _both(x, p, dim)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("eps", [1e-12, 0.5, 0.0, 10.0])
def test_eps_is_a_floor_on_the_norm(eps):
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.3, 0.4]], dtype=torch.float64)
    ours, theirs = _both(x, 2, 1, eps)
    for a, b in zip(ours, theirs, strict=True):  # eps = 0: 0 / 0 is NaN in both
        torch.testing.assert_close(a, b, equal_nan=True, **F64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.complex64])
def test_dtypes(dtype):
    torch.manual_seed(0)
    x = (torch.randn(4, 6) * 3).to(dtype)
    for p in (2, 1, math.inf, 3):
        ours, theirs = _both(x, p)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b)


def test_out_argument():
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    out_a, out_b = torch.empty(3, 4), torch.empty(3, 4)
    ya, yb = F.normalize(x, out=out_a), TF.normalize(x, out=out_b)
    assert ya is out_a and yb is out_b
    torch.testing.assert_close(out_a, out_b)
    wide_a, wide_b = torch.empty(3, 4, dtype=torch.float64), torch.empty(3, 4, dtype=torch.float64)
    torch.testing.assert_close(F.normalize(x, out=wide_a), TF.normalize(x, out=wide_b))


LAYOUTS = {
    "contiguous": lambda x: x,
    "channels_last": lambda x: x.to(memory_format=torch.channels_last),
    "permuted": lambda x: x.permute(0, 2, 3, 1),
    "expanded": lambda x: x[:1].expand(3, -1, -1, -1),
    "strided": lambda x: x[..., ::2],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_memory_layout_is_torchs(layout):
    torch.manual_seed(0)
    x = LAYOUTS[layout](torch.randn(3, 4, 5, 6))
    ours, theirs = F.normalize(x), TF.normalize(x)
    assert ours.stride() == theirs.stride()
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("p", [2, 1, 3, 0.5, math.inf])
def test_gradcheck_and_gradgradcheck(p):
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def f(t):
        return F.normalize(t, p=p, dim=1)

    assert torch.autograd.gradcheck(f, (x,))
    if p != math.inf:  # the max is not twice differentiable where it switches
        assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # inside torch.func
@pytest.mark.parametrize("p", [2, 1, 3, 0.5, -1.0, 0, math.inf])
def test_torch_func_transforms(p):
    """jacrev (reverse mode), jacfwd (forward mode) and vmap give torch's numbers."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64)
    x[0] = 0.0

    def ours(t):
        return F.normalize(t, p=p, dim=-1)

    def theirs(t):
        return TF.normalize(t, p=p, dim=-1)

    for transform in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(transform(ours)(x), transform(theirs)(x), **F64)
    torch.testing.assert_close(torch.func.vmap(ours)(x), torch.func.vmap(theirs)(x), **F64)


def test_matrix_norms_as_torch():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(
        F.normalize(x, p="nuc", dim=(1, 2)), TF.normalize(x, p="nuc", dim=(1, 2)), **F64
    )
    for f in (F.normalize, TF.normalize):
        with pytest.raises(RuntimeError):
            f(x, p="nuc")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    p=st.sampled_from(P),
    eps=st.sampled_from([1e-12, 1e-3, 1.0]),
    zeros=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_matches_torch(shape, p, eps, zeros, seed):
    torch.manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64)
    if zeros:
        x = x * (torch.rand(shape, dtype=torch.float64) > 0.5)
    dim = len(shape) - 1
    ours, theirs = _both(x, p, dim, eps)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **F64)
