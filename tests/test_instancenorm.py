"""InstanceNorm1d/2d/3d and functional.instance_norm against torch.nn.InstanceNorm* / F.instance_norm."""

from __future__ import annotations

import collections
import warnings
from functools import partial

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
    forward_backward_shapes,
    gradcheck_inputs,
    params,
    same_error,
    twins,
)
from twins import step as twin_step

import normtut
from normtut import functional as F

DIMS = {1: (nn.InstanceNorm1d, normtut.InstanceNorm1d), 2: (nn.InstanceNorm2d, normtut.InstanceNorm2d),
        3: (nn.InstanceNorm3d, normtut.InstanceNorm3d)}  # fmt: skip
SPATIAL = {1: (7,), 2: (4, 5), 3: (3, 4, 2)}


# NaN equals NaN in the state: an empty batch leaves NaN running buffers, in torch too.
step = partial(twin_step, state=partial(assert_same_state, equal_nan=True))


# --- construction -----------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
def test_signature_defaults_and_repr(d):
    ref_cls, our_cls = DIMS[d]
    assert params(our_cls) == params(ref_cls)
    for kw in [{}, {"affine": True}, {"affine": True, "bias": False}, {"track_running_stats": True, "momentum": None},
               {"eps": 1e-3, "momentum": 0.3, "affine": True, "track_running_stats": True}]:  # fmt: skip
        ours, ref = our_cls(5, **kw), ref_cls(5, **kw)
        assert repr(ours) == repr(ref)
        assert_same_state(ours, ref, equal_nan=True)
        assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
        assert (ours.affine, ours.track_running_stats, ours.momentum, ours.eps) == (
            ref.affine, ref.track_running_stats, ref.momentum, ref.eps)  # fmt: skip


def test_factory_kwargs():
    kw = {"affine": True, "track_running_stats": True, "dtype": torch.float64, "device": "cpu"}
    ours, ref = normtut.InstanceNorm2d(3, **kw), nn.InstanceNorm2d(3, **kw)
    assert_same_state(ours, ref, equal_nan=True)
    assert ours.weight.dtype == torch.float64 and ours.num_batches_tracked.dtype == torch.long


def test_functional_signature():
    assert params(F.instance_norm) == params(TF.instance_norm)


# --- forward, backward, buffers -----------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("affine, bias", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("track", [False, True])
@pytest.mark.parametrize("momentum", [0.3, None])
def test_train_eval_steps_match_torch(d, affine, bias, track, momentum):
    torch.manual_seed(d)
    ours, ref = twins(
        DIMS[d], 4, momentum=momentum, affine=affine, track_running_stats=track, bias=bias
    )
    opt_a, opt_b = (
        torch.optim.SGD(m.parameters(), lr=0.1) if affine else None for m in (ours, ref)
    )
    for i, training in enumerate([True, True, False, True, False]):
        ours.train(training)
        ref.train(training)
        x = torch.randn(3, 4, *SPATIAL[d]) * (i + 1) + i
        step(ours, ref, x, **F32)
        if affine:
            opt_a.step()
            opt_b.step()
            opt_a.zero_grad()
            opt_b.zero_grad()
    assert_same_state(ours, ref, equal_nan=True, **F32)
    if track:
        assert (
            ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 0
        )  # IN never counts
        moved = not torch.equal(ref.running_mean, torch.zeros(4))
        assert moved == (momentum is not None)  # momentum=None means "no update" for IN


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("track", [False, True])
def test_unbatched_input(d, track):
    torch.manual_seed(0)
    ours, ref = twins(DIMS[d], 3, affine=True, track_running_stats=track)
    for training in (True, False):
        ours.train(training)
        ref.train(training)
        step(ours, ref, torch.randn(3, *SPATIAL[d]) * 2 + 1, **F32)


def test_tracking_switched_off_after_construction():
    """torch still hands the buffers over (and updates them) when the flag is flipped later."""
    torch.manual_seed(0)
    ours, ref = twins(DIMS[2], 3, track_running_stats=True)
    ours.track_running_stats = ref.track_running_stats = False
    for training in (True, False):
        ours.train(training)
        ref.train(training)
        step(ours, ref, torch.randn(2, 3, 4, 4) + 1, **F32)


def test_functional_running_stats_and_eval():
    torch.manual_seed(0)
    x, w, b = (
        torch.randn(3, 4, 6, dtype=torch.float64) * 2 + 1,
        torch.rand(4).double(),
        torch.randn(4).double(),
    )
    rm_a, rv_a = torch.randn(4).double(), torch.rand(4).double() + 0.5
    rm_b, rv_b = rm_a.clone(), rv_a.clone()
    for use_input_stats in (True, False, True):
        ya = F.instance_norm(x, rm_a, rv_a, w, b, use_input_stats, 0.25, 1e-3)
        yb = TF.instance_norm(x, rm_b, rv_b, w, b, use_input_stats, 0.25, 1e-3)
        torch.testing.assert_close(ya, yb, **F64)
        torch.testing.assert_close(rm_a, rm_b, **F64)
        torch.testing.assert_close(rv_a, rv_b, **F64)


@pytest.mark.parametrize("buffer_dtype", [torch.float64, torch.float16])
def test_functional_buffers_of_another_dtype(buffer_dtype):
    """torch accepts running buffers of any floating dtype in instance_norm (not in batch_norm)."""
    x = torch.randn(3, 4, 7) * 2 + 1
    bufs = [torch.zeros(4, dtype=buffer_dtype), torch.ones(4, dtype=buffer_dtype)]
    ours, ref = [b.clone() for b in bufs], [b.clone() for b in bufs]
    torch.testing.assert_close(
        F.instance_norm(x, *ours, momentum=0.3), TF.instance_norm(x, *ref, momentum=0.3)
    )
    tol = F32 if buffer_dtype == torch.float64 else {"rtol": 2e-3, "atol": 1e-3}
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)
    ya, yb = (
        F.instance_norm(x, *ours, use_input_stats=False),
        TF.instance_norm(x, *ref, use_input_stats=False),
    )
    torch.testing.assert_close(ya, yb, **tol)


# --- state_dict -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw", [{}, {"affine": True}, {"affine": True, "bias": False, "track_running_stats": True}]
)
def test_state_dict_round_trip_both_ways(kw):
    torch.manual_seed(0)
    ours, ref = twins(DIMS[2], 3, **kw)
    x = torch.randn(2, 3, 4, 4)
    ref(x)  # moves torch's buffers if tracked
    fresh = normtut.InstanceNorm2d(3, **kw)
    fresh.load_state_dict(ref.state_dict())
    assert_same_state(fresh, ref, equal_nan=True)
    back = nn.InstanceNorm2d(3, **kw)
    back.load_state_dict(fresh.state_dict())
    assert_same_state(back, ref, equal_nan=True)
    assert ours.state_dict()._metadata == ref.state_dict()._metadata


def load_result(module: nn.Module, sd: dict, strict: bool):
    """(exception type, message) or the returned key lists, for comparing with torch."""
    try:
        r = module.load_state_dict(collections.OrderedDict(sd), strict=strict)
        return ("ok", r.missing_keys, r.unexpected_keys)
    except Exception as e:  # noqa: BLE001 - we compare whatever torch raises
        return (type(e).__name__, str(e))


def old_checkpoint() -> collections.OrderedDict:
    """A pre-0.4-style dict: running stats, no num_batches_tracked, no version metadata."""
    return collections.OrderedDict(
        running_mean=torch.arange(3.0), running_var=torch.full((3,), 2.0)
    )


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("track", [False, True])
def test_old_checkpoint_running_stats(strict, track):
    ours, ref = (
        normtut.InstanceNorm2d(3, track_running_stats=track),
        nn.InstanceNorm2d(3, track_running_stats=track),
    )
    sd = old_checkpoint()
    ra, rb = load_result(ours, sd, strict), load_result(ref, sd, strict)
    assert ra == rb
    if not track:
        assert (
            ra[0] == "RuntimeError" and "Unexpected running stats buffer(s)" in ra[1]
        )  # even with strict=False
    assert list(sd) == ["running_mean", "running_var"]  # the caller's dict is left alone
    assert_same_state(ours, ref, equal_nan=True)


@pytest.mark.parametrize("strict", [True, False])
def test_tracked_checkpoint_into_untracked_layer(strict):
    """A versioned dict with running stats is a plain key mismatch, not the old-checkpoint error."""
    sd = nn.InstanceNorm2d(3, track_running_stats=True).state_dict()
    ra = load_result(normtut.InstanceNorm2d(3), sd, strict)
    rb = load_result(nn.InstanceNorm2d(3), sd, strict)
    assert ra == rb
    ours_sd = normtut.InstanceNorm2d(3, track_running_stats=True).state_dict()
    assert load_result(nn.InstanceNorm2d(3), ours_sd, strict) == rb


# --- exceptions and warnings --------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
def test_one_value_per_channel_in_training(d):
    ours, ref = twins(DIMS[d], 3)
    x = torch.randn(2, 3, *([1] * d))
    same_error(lambda: ours(x), lambda: ref(x), ValueError)
    same_error(lambda: ours(x[0]), lambda: ref(x[0]), ValueError)  # unbatched
    ours.eval()
    ref.eval()  # not tracking: eval still uses the instance statistics
    same_error(lambda: ours(x), lambda: ref(x), ValueError)


def test_single_spatial_element_in_eval_with_running_stats():
    ours, ref = twins(DIMS[2], 3, track_running_stats=True)
    step(ours, ref, torch.randn(2, 3, 4, 4), **F32)
    ours.eval()
    ref.eval()
    step(ours, ref, torch.randn(2, 3, 1, 1), **F32)


@pytest.mark.parametrize("d, bad_rank", [(1, 1), (1, 4), (2, 2), (2, 5), (3, 3), (3, 6)])
def test_wrong_rank(d, bad_rank):
    ours, ref = twins(DIMS[d], 3)
    x = torch.randn(*([3] * bad_rank))
    same_error(lambda: ours(x), lambda: ref(x), ValueError)


def test_wrong_channel_count():
    ours, ref = twins(DIMS[2], 4, affine=True)
    x = torch.randn(2, 3, 4, 4)
    same_error(lambda: ours(x), lambda: ref(x), ValueError)
    ours, ref = twins(DIMS[2], 4)  # without affine, num_features is unused: a warning
    with pytest.warns(UserWarning, match="does not match num_features"):
        ya = ours(x)
    with pytest.warns(UserWarning, match="does not match num_features"):
        yb = ref(x)
    torch.testing.assert_close(ya, yb, **F32)
    ours, ref = twins(DIMS[2], 4, track_running_stats=True)  # buffers of the wrong length
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        same_error(lambda: ours(x), lambda: ref(x), RuntimeError)


@pytest.mark.parametrize(
    "args, kwargs, exc",
    [
        ((torch.randn(3),), {}, ValueError),  # 1-D: no spatial axis
        ((torch.tensor(1.0),), {}, ValueError),
        ((torch.randn(2, 3, 1),), {}, ValueError),
        ((torch.randn(2, 3, 4), torch.zeros(3), None), {}, ValueError),  # one buffer only
        ((torch.randn(2, 3, 4), None, torch.ones(3)), {}, ValueError),
        ((torch.randn(2, 3, 4),), {"use_input_stats": False}, RuntimeError),  # eval without buffers
        ((torch.randn(2, 3, 4), torch.zeros(3), None), {"use_input_stats": False}, RuntimeError),
        ((torch.randn(2, 3, 4),), {"weight": torch.ones(4)}, RuntimeError),
        ((torch.randn(2, 3, 4),), {"bias": torch.ones(2)}, RuntimeError),
        ((torch.randn(2, 3, 4), torch.zeros(4), torch.ones(4)), {}, RuntimeError),
        ((torch.randn(2, 3, 4).double(),), {"weight": torch.ones(3)}, RuntimeError),  # mixed dtypes
        ((torch.randn(2, 3, 4),), {"weight": torch.ones(3).half()}, RuntimeError),
        (
            (torch.randn(2, 3, 4).half(),),
            {"weight": torch.ones(3), "bias": torch.ones(3).half()},
            RuntimeError,
        ),
        ((torch.ones(2, 3, 4, dtype=torch.long),), {}, NotImplementedError),
    ],
)
def test_functional_errors(args, kwargs, exc):
    same_error(
        lambda: F.instance_norm(*args, **kwargs), lambda: TF.instance_norm(*args, **kwargs), exc
    )


# --- edge cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 3, 5), (2, 0, 5), (2, 3, 0), (0, 3, 0)])
@pytest.mark.parametrize("track", [False, True])
def test_zero_size_inputs(shape, track):
    """Outputs, gradients and buffers like torch; an empty batch leaves NaN buffers there too."""
    ours, ref = twins(DIMS[1], shape[1], track_running_stats=track)
    step(ours, ref, torch.randn(shape))


@pytest.mark.parametrize("shape", [(0, 3, 5), (2, 0, 5), (0, 3, 0)])
def test_zero_size_inputs_with_affine(shape):
    """Known difference: torch's IN with affine=True raises IndexError when N * C = 0 (an indexing
    bug in its kernel, not a check); ours returns the empty output, zero affine gradients."""
    ours, ref = twins(DIMS[1], shape[1], affine=True, track_running_stats=True)
    x = torch.randn(shape)
    with pytest.raises(IndexError):
        ref(x)
    ref.affine = False  # torch's own empty-input result without the affine (buffers included)
    weight, bias = ref.weight, ref.bias
    ref.weight = ref.bias = None
    forward_backward_shapes(ours, ref, x)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, equal_nan=True)
    torch.testing.assert_close(ours.running_var, ref.running_var, equal_nan=True)
    assert torch.equal(ours.weight.grad, torch.zeros_like(weight))
    assert torch.equal(ours.bias.grad, torch.zeros_like(bias))


def test_large_offset_is_stable():
    torch.manual_seed(0)
    check_large_offset(F.instance_norm, TF.instance_norm)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("param_dtype", ["same", "float32"])
def test_low_precision(dtype, param_dtype):
    """Computed in float32, returned in the input dtype; torch has CPU half/bfloat16 kernels for IN."""
    torch.manual_seed(0)
    pdt = dtype if param_dtype == "same" else torch.float32
    ours, ref = twins(DIMS[2], 4, affine=True, track_running_stats=True, dtype=pdt)
    ref32 = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    tol = check_low_precision(ours, ref, ref32, dtype, backward=False)
    for a, b in zip(ours.state_dict().values(), ref32.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), **tol)


# --- properties and gradients ---------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    d=st.sampled_from([1, 2, 3]),
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    affine=st.booleans(),
    bias=st.booleans(),
    track=st.booleans(),
    momentum=st.sampled_from([0.1, 0.5, 1.0, None]),
    batched=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_matches_torch(d, n, c, spatial, affine, bias, track, momentum, batched, seed):
    spatial = spatial[:d]
    if torch.Size(spatial).numel() == 1:
        spatial[0] += 1  # one value per instance is an error, tested above
    torch.manual_seed(seed)
    ours, ref = twins(
        DIMS[d],
        c,
        momentum=momentum,
        affine=affine,
        track_running_stats=track,
        bias=bias,
        dtype=torch.float64,
    )
    for training in (True, False, True):
        ours.train(training)
        ref.train(training)
        x = torch.randn(n, c, *spatial, dtype=torch.float64) * 3 + 1
        step(ours, ref, x if batched else x[0], **F64)


@pytest.mark.parametrize("use_input_stats", [True, False])
def test_gradcheck(use_input_stats):
    torch.manual_seed(0)
    x, w, b = gradcheck_inputs((2, 3, 5), (3,))
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5

    def f(x, w, b):
        return F.instance_norm(x, rm.clone(), rv.clone(), w, b, use_input_stats, 0.1, 1e-5)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))
