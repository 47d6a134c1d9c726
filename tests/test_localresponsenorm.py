"""LocalResponseNorm and functional.local_response_norm against torch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch_inputs import module_inputs, sample_ids
from twins import F32, F64, forward_backward, params

import normtut
from normtut import functional as F

pytestmark = pytest.mark.usefixtures("one_thread")


def test_signatures_repr_and_no_state():
    assert params(normtut.LocalResponseNorm) == params(nn.LocalResponseNorm)
    assert params(F.local_response_norm) == params(TF.local_response_norm)
    for args in [(3,), (2, 1e-3, 0.5, 2.0)]:
        ours, ref = normtut.LocalResponseNorm(*args), nn.LocalResponseNorm(*args)
        assert repr(ours) == repr(ref)
        assert ours.state_dict() == ref.state_dict() == {}


@pytest.mark.parametrize("desc", sample_ids(nn.LocalResponseNorm))
def test_torch_module_db_inputs(desc):
    for dtype, tol in ((torch.float64, F64), (torch.float32, F32)):
        for d, args, kwargs, (x,), _ in module_inputs(nn.LocalResponseNorm, dtype):
            if (d or "default") == desc:
                ours, ref = normtut.LocalResponseNorm(*args, **kwargs), nn.LocalResponseNorm(*args)
                forward_backward(ours, ref, x.detach(), **tol)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 6, 9])  # up to and past C = 6
@pytest.mark.parametrize("shape", [(2, 6, 7), (2, 6, 4, 5), (1, 6, 2, 3, 4), (2, 6, 2, 2, 2, 3)])
def test_every_window_size_and_rank(size, shape):
    torch.manual_seed(0)
    ours, ref = (
        normtut.LocalResponseNorm(size, 0.3, 0.8, 1.5),
        nn.LocalResponseNorm(size, 0.3, 0.8, 1.5),
    )
    forward_backward(ours, ref, torch.randn(shape, dtype=torch.float64) * 3, **F64)


def test_large_alpha_makes_the_window_matter():
    """With alpha = size and k = 0, beta = 0.5, each value is divided by the RMS of its window."""
    x = torch.tensor([[3.0, 4.0, 0.0, 1.0]]).reshape(1, 4, 1)
    y = F.local_response_norm(x, 2, alpha=1.0, beta=0.5, k=0.0)
    # windows (c-1, c): [0, 3], [3, 4], [4, 0], [0, 1]; mean squares 4.5, 12.5, 8, 0.5
    expected = torch.tensor([3 / 4.5**0.5, 4 / 12.5**0.5, 0.0, 1 / 0.5**0.5]).reshape(1, 4, 1)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(y, TF.local_response_norm(x, 2, alpha=1.0, beta=0.5, k=0.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_floating_dtypes(dtype):
    torch.manual_seed(0)
    x = (torch.randn(2, 5, 6) * 4).to(dtype)
    ours, theirs = F.local_response_norm(x, 3, 0.5), TF.local_response_norm(x, 3, 0.5)
    assert ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours, theirs)


def test_integer_input_averages_with_truncation_like_torch():
    x = torch.arange(-12, 12).reshape(2, 4, 3)
    ours, theirs = F.local_response_norm(x, 3, 0.5), TF.local_response_norm(x, 3, 0.5)
    assert ours.dtype == theirs.dtype == torch.float32
    assert torch.equal(ours, theirs)
    for dtype in (torch.int32, torch.uint8, torch.bool, torch.complex64):  # no kernel in torch
        for f in (F.local_response_norm, TF.local_response_norm):
            with pytest.raises(NotImplementedError):
                f(x.to(dtype), 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_four_d_input_torch_has_no_kernel_for(dtype):
    """A deliberate difference: torch's CPU average pooling over 3 axes has no float16/bfloat16
    kernel, so torch raises NotImplementedError for 4-D and 5-D inputs; normtut computes (in
    float32, like torch's 3-D path) what torch computes from a float32 copy, rounded."""
    x = (torch.randn(2, 5, 3, 4) * 2).to(dtype)
    with pytest.raises(NotImplementedError):
        TF.local_response_norm(x, 3)
    ours = F.local_response_norm(x, 3)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, TF.local_response_norm(x.float(), 3).to(dtype))


LAYOUTS = {
    "contiguous": lambda x: x,
    "channels_last": lambda x: x.to(memory_format=torch.channels_last),
    "permuted": lambda x: x.permute(0, 1, 3, 2),
    "batch_channel_swapped": lambda x: x.transpose(0, 1).contiguous().transpose(0, 1),
    "expanded": lambda x: x[:, :, :1].expand(-1, -1, 4, -1),
    "strided": lambda x: torch.randn(3, 4, 4, 10)[..., ::2],
    "3d_transposed": lambda x: x[:, :, 0].transpose(1, 2).contiguous().transpose(1, 2),
    "channels_last_3d": lambda x: x.unsqueeze(2).to(memory_format=torch.channels_last_3d),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_memory_layout_is_torchs(layout):
    torch.manual_seed(0)
    x = LAYOUTS[layout](torch.randn(3, 4, 4, 5))
    ours, theirs = F.local_response_norm(x, 3), TF.local_response_norm(x, 3)
    assert ours.stride() == theirs.stride()
    torch.testing.assert_close(ours, theirs)


def test_empty_input_is_returned_itself():
    x = torch.randn(0, 4, 3)
    assert F.local_response_norm(x, 3) is x and TF.local_response_norm(x, 3) is x


def test_five_d_input_torch_cannot_view():
    """A deliberate difference: torch's 5-D+ path calls .view() on x*x and raises for inputs
    whose last axes cannot be merged (e.g. transposed); normtut computes the same as torch
    does on a contiguous copy."""
    x = torch.randn(2, 6, 3, 4, 5).transpose(3, 4)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        TF.local_response_norm(x, 3)
    torch.testing.assert_close(
        F.local_response_norm(x, 3), TF.local_response_norm(x.contiguous(), 3)
    )


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)

    def f(t):
        return F.local_response_norm(t, 3, alpha=0.5, beta=0.75, k=1.0)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 7),
    spatial=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    size=st.integers(1, 8),
    alpha=st.floats(1e-4, 2.0),
    beta=st.floats(0.1, 1.5),
    k=st.floats(0.5, 3.0),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_matches_torch(n, c, spatial, size, alpha, beta, k, seed):
    torch.manual_seed(seed)
    x = torch.randn(n, c, *spatial, dtype=torch.float64) * 2
    ours, ref = (
        normtut.LocalResponseNorm(size, alpha, beta, k),
        nn.LocalResponseNorm(size, alpha, beta, k),
    )
    forward_backward(ours, ref, x, **F64)
