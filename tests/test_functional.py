"""normtut.functional: the shared statistics and F.batch_norm, against torch (2.13)."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from twins import params

from normtut import functional as F

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

F64 = {"rtol": 1e-9, "atol": 1e-9}


# ---------------------------------------------------------------------------
# The shared steps: moments, normalize, affine, unbiased, update_running.
# ---------------------------------------------------------------------------


@st.composite
def tensors_and_dims(draw):
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    dims = draw(
        st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True)
    )
    return shape, sorted(dims), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(tensors_and_dims())
def test_moments_match_torch_var_mean(case):
    shape, dims, seed = case
    x = (
        torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3
        + 1
    )
    mean, var = F.moments(x, dims)
    var_ref, mean_ref = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    assert mean.shape == mean_ref.shape and var.shape == var_ref.shape
    torch.testing.assert_close(mean, mean_ref, **F64)
    torch.testing.assert_close(var, var_ref, **F64)


@pytest.mark.parametrize("shape", [(256, 4), (4096, 2), (64, 4, 32)])
def test_moments_large_offset_float32(shape):
    """x = 1000 + 0.01 z in float32: a variance of 1e-4 survives; E[x^2] - E[x]^2 does not."""
    torch.manual_seed(0)
    x = torch.randn(shape) * 0.01 + 1000
    dims = [0, *range(2, x.dim())]
    mean, var = F.moments(x, dims)
    var64, mean64 = torch.var_mean(
        x.double(), dim=dims, correction=0, keepdim=True
    )  # exact for these values
    assert mean.dtype == var.dtype == torch.float32
    assert ((mean.double() - mean64).abs() <= 1e-4).all()  # ~ an ulp of 1000 in float32 (6e-5)
    torch.testing.assert_close(var.double(), var64, rtol=2e-2, atol=0)
    naive = (x * x).mean(dims, keepdim=True) - x.mean(
        dims, keepdim=True
    ) ** 2  # the one-pass formula
    assert (
        (naive.double() - var64).abs() / var64
    ).max() > 1.0  # off by more than the variance itself
    # normalize() with our moments is as good as torch's own kernel, or better
    exact = (x.double() - mean64) / torch.sqrt(var64 + 1e-5)
    err_ours = (F.standardize(x, mean, var, 1e-5).double() - exact).abs().max()
    err_torch = (TF.batch_norm(x, None, None, training=True).double() - exact).abs().max()
    assert err_ours <= max(err_torch, 5e-3), (err_ours, err_torch)


@pytest.mark.parametrize("n", [2, 3, 10])
def test_unbiased_matches_torch_var(n):
    x = torch.randn(n, 4, dtype=torch.float64)
    biased = x.var(dim=0, correction=0)
    torch.testing.assert_close(F.unbiased(biased, n), x.var(dim=0, correction=1), **F64)


@pytest.mark.parametrize("eps", [1e-5, 0.1, 0.0])
def test_normalize_and_affine_match_batch_norm_eval(eps):
    """Eval-mode F.batch_norm with (mean, var) as its running statistics is normalize + affine."""
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    var, mean = torch.var_mean(x, dim=(0, 2), correction=0, keepdim=True)
    w, b = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    ref = TF.batch_norm(x, mean.flatten(), var.flatten(), training=False, eps=eps)
    torch.testing.assert_close(F.standardize(x, mean, var, eps), ref, **F64)
    ref_affine = TF.batch_norm(x, mean.flatten(), var.flatten(), w, b, training=False, eps=eps)
    torch.testing.assert_close(
        F.affine(F.standardize(x, mean, var, eps), w, b, (1, 3, 1)), ref_affine, **F64
    )
    plain = TF.batch_norm(
        x, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), w, None, eps=0.0
    )
    torch.testing.assert_close(F.affine(x, w, None, (1, 3, 1)), plain, **F64)


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str
)
@pytest.mark.parametrize("momentum", [0.1, 0.3, 1.0, 0.0])
def test_update_running_matches_torch(dtype, momentum):
    """update_running on a buffer of any dtype: in place, as torch's kernel updates its buffer."""
    x = (torch.randn(8, 3) * 2 + 5).to(dtype)
    low = dtype in (torch.float16, torch.bfloat16)
    for buffer_dtype in (
        (dtype, torch.float32) if low else (dtype,)
    ):  # low-precision input: float32 buffers too
        ours, ref = torch.rand(3).to(buffer_dtype), torch.rand(3).to(buffer_dtype)
        ref.copy_(ours)
        ptr = ours.data_ptr()
        TF.batch_norm(x, ref, torch.ones(3, dtype=buffer_dtype), training=True, momentum=momentum)
        F.update_running(
            ours, x.float().mean(0) if low else x.mean(0), momentum
        )  # torch's mean is float32 too
        assert ours.data_ptr() == ptr and ours.dtype == buffer_dtype
        torch.testing.assert_close(ours, ref, rtol=2 * torch.finfo(buffer_dtype).eps, atol=1e-6)


# ---------------------------------------------------------------------------
# batch_norm: signature, semantics, gradients.
# ---------------------------------------------------------------------------


def test_batch_norm_signature():
    assert params(F.batch_norm) == params(TF.batch_norm)


@st.composite
def batch_norm_calls(draw):
    rank = draw(st.integers(0, 3))
    return {
        "shape": (draw(st.integers(1, 4)), draw(st.integers(1, 4)), *draw(st.lists(st.integers(1, 3), min_size=rank,
                                                                                    max_size=rank))),
        "training": draw(st.booleans()),
        "buffers": draw(st.booleans()),
        "weight": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "momentum": draw(st.floats(0.0, 1.0)),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }  # fmt: skip


@settings(max_examples=120, deadline=None, derandomize=True)
@given(batch_norm_calls())
def test_batch_norm_matches_torch(call):
    """Outputs, gradients and in-place buffer updates, for any mix of optional tensors."""
    gen = torch.Generator().manual_seed(call["seed"])
    c = call["shape"][1]
    x = torch.randn(call["shape"], generator=gen, dtype=torch.float64) * 2 + 3
    if not call["training"]:
        call["buffers"] = True  # eval without running statistics is an error, tested below
    rm = torch.randn(c, generator=gen, dtype=torch.float64) if call["buffers"] else None
    rv = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5 if call["buffers"] else None
    w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5 if call["weight"] else None
    b = torch.randn(c, generator=gen, dtype=torch.float64) if call["bias"] else None
    kw = {"training": call["training"], "momentum": call["momentum"], "eps": call["eps"]}

    def run(fn):
        xs = x.clone().requires_grad_()
        ws, bs = (None if t is None else t.clone().requires_grad_() for t in (w, b))
        rms, rvs = (None if t is None else t.clone() for t in (rm, rv))
        ptrs = [t.data_ptr() for t in (rms, rvs) if t is not None]
        try:
            y = fn(xs, rms, rvs, ws, bs, **kw)
        except ValueError as e:  # one value per channel in training
            return type(e)
        assert [
            t.data_ptr() for t in (rms, rvs) if t is not None
        ] == ptrs  # updated in place, never replaced
        y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).reshape(y.shape))
        return y, xs.grad, *(None if t is None else t.grad for t in (ws, bs)), rms, rvs

    ours, ref = run(F.batch_norm), run(TF.batch_norm)
    if not isinstance(ref, tuple):
        assert ours is ref
        return
    for a, r in zip(ours, ref, strict=True):
        assert (a is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(a, r, **F64)


@pytest.mark.parametrize("momentum", [0.1, 0.3, 1.0])
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 2, 2)])
def test_running_var_unbiased_normalization_biased(momentum, shape):
    """The buffer gets the unbiased variance; the output is normalized with the biased one."""
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    dims = [0, *range(2, x.dim())]
    n = x.numel() // x.shape[1]
    for fn in (TF.batch_norm, F.batch_norm):  # the same facts hold for torch and for us
        rm, rv = (
            torch.full((shape[1],), 0.5, dtype=torch.float64),
            torch.full((shape[1],), 2.0, dtype=torch.float64),
        )
        y = fn(x, rm, rv, training=True, momentum=momentum, eps=1e-5)
        var_b = x.var(dim=dims, correction=0)
        torch.testing.assert_close(
            rv, (1 - momentum) * 2.0 + momentum * x.var(dim=dims, correction=1), **F64
        )
        torch.testing.assert_close(rv, (1 - momentum) * 2.0 + momentum * var_b * n / (n - 1), **F64)
        torch.testing.assert_close(rm, (1 - momentum) * 0.5 + momentum * x.mean(dim=dims), **F64)
        shape_c = (1, shape[1]) + (1,) * (x.dim() - 2)
        expected = (x - x.mean(dim=dims).reshape(shape_c)) / torch.sqrt(
            var_b.reshape(shape_c) + 1e-5
        )
        torch.testing.assert_close(y, expected, **F64)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 4), (2, 2, 2, 3)])
def test_gradcheck(training, affine, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    c = shape[1]
    w = torch.rand(c, dtype=torch.float64, requires_grad=True) if affine != "none" else None
    b = torch.randn(c, dtype=torch.float64, requires_grad=True) if affine == "both" else None
    rm, rv = torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5

    def fn(
        x, w=None, b=None
    ):  # fresh buffers every call: the training update must not leak between calls
        return F.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training, eps=1e-3)

    inputs = tuple(t for t in (x, w, b) if t is not None)
    assert torch.autograd.gradcheck(fn, inputs)
    if training:
        assert torch.autograd.gradgradcheck(fn, inputs)


# ---------------------------------------------------------------------------
# Empty inputs.
# ---------------------------------------------------------------------------

EMPTY = [
    ("batch-train", (0, 3, 2), True, 3, 3),
    ("batch-eval", (0, 3), False, 3, 3),
    ("no-channels", (4, 0, 2), True, 0, None),
    ("no-spatial", (4, 3, 0), True, 3, 3),
    ("wrong-buffers-ignored", (0, 3), True, 5, 3),
    ("no-buffers-in-eval", (0, 3, 2), False, None, 3),
    ("1-d-empty", (0,), True, 3, 3),
]


@pytest.mark.parametrize("case", EMPTY, ids=[c[0] for c in EMPTY])
def test_empty_inputs_match_torch(case):
    """torch returns an empty input as it is (times weight[0], plus bias[0]) and checks nothing more."""
    _, shape, training, n_buffers, n_affine = case
    results = []
    for fn in (TF.batch_norm, F.batch_norm):
        torch.manual_seed(1)
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        rm = None if n_buffers is None else torch.randn(n_buffers, dtype=torch.float64)
        rv = None if n_buffers is None else torch.rand(n_buffers, dtype=torch.float64)
        w = (
            None
            if n_affine is None
            else torch.rand(n_affine, dtype=torch.float64, requires_grad=True)
        )
        b = (
            None
            if n_affine is None
            else torch.randn(n_affine, dtype=torch.float64, requires_grad=True)
        )
        before = None if rm is None else (rm.clone(), rv.clone())
        y = fn(x, rm, rv, w, b, training=training)
        y.sum().backward()
        if before is not None:
            assert torch.equal(rm, before[0]) and torch.equal(rv, before[1])  # buffers untouched
        results.append((y, x.grad, None if w is None else w.grad, None if b is None else b.grad))
    for a, r in zip(*results, strict=True):
        assert (a is None) == (r is None)
        if r is not None:
            assert a.shape == r.shape and a.dtype == r.dtype
            torch.testing.assert_close(a, r, **F64)


# ---------------------------------------------------------------------------
# Errors: the type torch raises, a message that says what is wrong.
# ---------------------------------------------------------------------------


def _bn(fn, shape=(4, 3), rm=3, rv=3, w=None, b=None, dtype=torch.float32, pdtype=None, **kw):
    """Call fn (F.batch_norm or ours) with per-channel tensors of the given lengths (None: absent)."""
    pdtype = pdtype or {}
    x = (
        torch.randn(shape).to(dtype)
        if dtype.is_floating_point or dtype.is_complex
        else torch.randint(0, 5, shape, dtype=dtype)
    )
    make = {"rm": torch.zeros, "rv": torch.ones, "w": torch.ones, "b": torch.zeros}
    given = {"rm": rm, "rv": rv, "w": w, "b": b}
    t = {
        k: None
        if v is None
        else make[k](v if isinstance(v, tuple) else (v,), dtype=pdtype.get(k, torch.float32))
        for k, v in given.items()
    }
    return fn(x, t["rm"], t["rv"], t["w"], t["b"], **kw)  # fmt: skip


HALF, BF16, F32, F64T = torch.float16, torch.bfloat16, torch.float32, torch.float64
ERRORS = [
    ("one-value-train", {"shape": (1, 3), "training": True}, ["more than 1 value per channel", "[1, 3]"]),
    ("one-value-3d-train", {"shape": (1, 3, 1), "training": True}, ["more than 1 value per channel"]),
    ("0-d-input-train", {"shape": (), "training": True}, []),
    ("1-d-input-train", {"shape": (5,), "rm": None, "rv": None, "training": True}, ["(N, C, *)", "1-D"]),
    ("1-d-input-with-buffers", {"shape": (5,), "training": True}, ["(N, C, *)", "1-D"]),
    ("1-d-input-eval", {"shape": (5,), "rm": None, "rv": None}, ["(N, C, *)", "1-D"]),
    ("0-d-input-eval", {"shape": ()}, ["(N, C, *)", "0-D"]),
    ("1-d-one-value-train", {"shape": (1,), "training": True}, ["more than 1 value per channel"]),
    ("running-mean-size", {"rm": 4, "training": True}, ["running_mean", "3", "4"]),
    ("running-var-size-eval", {"rv": 2}, ["running_var", "3", "2"]),
    ("weight-size", {"w": 4, "training": True}, ["weight", "3", "4"]),
    ("bias-size-eval", {"b": 2}, ["bias", "3", "2"]),
    ("running-mean-2-d", {"rm": (3, 1), "training": True}, ["running_mean", "1-D"]),
    ("running-var-2-d-eval", {"rv": (1, 3)}, ["running_var", "1-D"]),
    ("eval-no-buffers", {"rm": None, "rv": None}, ["running_mean", "evaluation"]),
    ("eval-no-running-var", {"rv": None}, ["running_var", "evaluation"]),
    ("train-only-running-mean", {"rv": None, "training": True}, ["running_mean", "running_var", "None"]),
    ("train-only-running-var", {"rm": None, "training": True}, ["running_mean", "running_var", "None"]),
    ("eps-zero-train", {"eps": 0.0, "training": True}, ["eps", "positive", "0.0"]),
    ("eps-negative-train", {"eps": -1.0, "training": True}, ["eps", "-1.0"]),
    ("eps-negative-eval", {"eps": -1e-5}, ["eps", "non-negative"]),
    ("int-input", {"dtype": torch.int64, "training": True}, ["batch_norm", "int64", "floating"]),
    ("int-input-no-buffers", {"dtype": torch.int32, "rm": None, "rv": None, "training": True}, ["int32"]),
    ("bool-input-eval", {"dtype": torch.bool}, ["bool"]),
    ("complex-input", {"dtype": torch.complex64, "rm": None, "rv": None, "training": True}, ["complex64"]),
    ("float64-input-float32-buffers", {"dtype": F64T, "training": True}, ["float64", "float32"]),
    ("float64-input-float32-weight", {"dtype": F64T, "rm": None, "rv": None, "w": 3, "training": True},
     ["float64", "float32"]),
    ("float32-input-float64-buffers", {"pdtype": {"rm": F64T, "rv": F64T}}, ["float32", "float64"]),
    ("float32-input-one-float64-buffer", {"pdtype": {"rv": F64T}, "training": True}, ["float32", "float64"]),
    ("float32-input-float16-weight", {"w": 3, "pdtype": {"w": HALF}}, ["float32", "float16"]),
    ("float16-input-bfloat16-buffers", {"dtype": HALF, "pdtype": {"rm": BF16, "rv": BF16}}, ["float16", "bfloat16"]),
    ("float16-input-float64-buffers", {"dtype": HALF, "pdtype": {"rm": F64T, "rv": F64T}, "training": True},
     ["float16", "float64"]),
    ("float16-input-float16-buffers-float32-weight", {"dtype": HALF, "w": 3, "pdtype": {"rm": HALF, "rv": HALF}},
     ["float16", "float32"]),
    ("bfloat16-input-float32-weight-bfloat16-bias", {"dtype": BF16, "rm": None, "rv": None, "w": 3, "b": 3,
                                                     "pdtype": {"b": BF16}, "training": True}, ["bfloat16", "float32"]),
    ("float32-input-int64-weight", {"w": 3, "pdtype": {"w": torch.int64}}, ["float32", "int64"]),
]  # fmt: skip


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_errors_match_torch(case):
    _, kw, words = case
    with pytest.raises(Exception) as theirs:
        _bn(TF.batch_norm, **kw)
    with pytest.raises(Exception) as ours:
        _bn(F.batch_norm, **kw)
    assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)
    for word in words:
        assert word in str(ours.value), (word, str(ours.value))


def test_one_value_per_channel_message_is_torchs():
    msgs = []
    for fn in (TF.batch_norm, F.batch_norm):
        with pytest.raises(ValueError) as e:
            fn(torch.randn(1, 3, 1, 1), None, None, training=True)
        msgs.append(str(e.value))
    assert msgs[1] == msgs[0]
    assert (
        msgs[1]
        == "Expected more than 1 value per channel when training, got input size torch.Size([1, 3, 1, 1])"
    )


# ---------------------------------------------------------------------------
# Dtype rules: what runs, in which dtype it comes back.
# ---------------------------------------------------------------------------

ACCEPTED = [
    (F32, F32, F32), (F64T, F64T, F64T), (HALF, HALF, HALF), (HALF, F32, F32), (BF16, BF16, BF16), (BF16, F32, F32),
    (HALF, F32, None), (BF16, None, F32), (HALF, None, None), (F64T, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("dtypes", "training"),
    [(d, t) for d in ACCEPTED for t in (True, False) if t or d[1] is not None],
    ids=str,
)
def test_accepted_dtypes_match_torch(dtypes, training):
    """(input, buffers, affine) dtypes that torch runs: same output dtype, same values, same buffers."""
    x_dtype, buf_dtype, aff_dtype = dtypes
    torch.manual_seed(2)
    x = (torch.randn(16, 3, 4) * 20 + 250).to(x_dtype)  # float16: x^2 would overflow
    out = []
    for fn in (TF.batch_norm, F.batch_norm):
        rm = None if buf_dtype is None else torch.full((3,), 240.0).to(buf_dtype)
        rv = None if buf_dtype is None else torch.full((3,), 300.0).to(buf_dtype)
        w = None if aff_dtype is None else torch.tensor([0.5, 1.0, 2.0]).to(aff_dtype)
        b = None if aff_dtype is None else torch.tensor([-1.0, 0.0, 1.0]).to(aff_dtype)
        y = fn(x, rm, rv, w, b, training=training)
        out.append((y, rm, rv))
    (ya, rma, rva), (yb, rmb, rvb) = out
    assert ya.dtype == yb.dtype == x_dtype
    eps = torch.finfo(x_dtype).eps
    torch.testing.assert_close(ya.double(), yb.double(), rtol=32 * eps, atol=32 * eps)
    if rma is not None:
        eps_b = torch.finfo(rma.dtype).eps
        torch.testing.assert_close(rma.double(), rmb.double(), rtol=32 * eps_b, atol=0)
        torch.testing.assert_close(rva.double(), rvb.double(), rtol=32 * eps_b, atol=0)


@pytest.mark.parametrize("fn", ["layer_norm", "group_norm", "instance_norm"])
@pytest.mark.parametrize("dtypes", [(HALF, F32, HALF), (HALF, HALF, F32), (BF16, F32, F32), (F32, F32, F64T),
                                    (F64T, F32, F32), (BF16, BF16, BF16), (F32, HALF, HALF)], ids=str)  # fmt: skip
def test_shared_dtype_rule_for_weight_and_bias(fn, dtypes):
    """The rule lives in one helper; the other layers' weight and bias follow torch's too."""
    x_dtype, w_dtype, b_dtype = dtypes
    calls = {
        "layer_norm": lambda m, x, w, b: m.layer_norm(x, [3], w, b),
        "group_norm": lambda m, x, w, b: m.group_norm(x, 1, w, b),
        "instance_norm": lambda m, x, w, b: m.instance_norm(x, weight=w, bias=b),
    }
    x = torch.randn(4, 3, 3).to(x_dtype) if fn != "layer_norm" else torch.randn(4, 2, 3).to(x_dtype)
    w, b = torch.ones(3, dtype=w_dtype), torch.zeros(3, dtype=b_dtype)
    results = []
    for module in (TF, F):
        try:
            results.append(calls[fn](module, x, w, b))
        except Exception as e:
            results.append(e)
    theirs, ours = results
    if isinstance(theirs, Exception):
        assert type(ours) is type(theirs), (ours, theirs)
        assert str(x_dtype).removeprefix("torch.") in str(ours)
    else:
        assert not isinstance(ours, Exception), ours
        assert ours.dtype == theirs.dtype
        eps = torch.finfo(x_dtype).eps
        torch.testing.assert_close(ours, theirs, rtol=4 * eps, atol=4 * eps)


# ---------------------------------------------------------------------------
# One pass over shifted data: shifted_moments, partial_moments, merge_moments.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [(0,), (1,), (0, 2), (1, 2, 3), (0, 2, 3)])
def test_partial_moments_count_mean_m2_match_torch(dims):
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64) * 3 + 7
    n, mean, m2 = F.partial_moments(x, dims)
    var_ref, mean_ref = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    assert n == x.numel() // mean_ref.numel()
    torch.testing.assert_close(mean, mean_ref, **F64)
    torch.testing.assert_close(m2, var_ref * n, **F64)


def test_shifted_moments_returns_the_shifted_data():
    """d = x - K with K each group's mean up to rounding; mean = K + mean(d) and
    x - mean = d - mean(d); the input itself is left as it is."""
    x = torch.randn(6, 3, 4) * 0.01 + 1000
    before = x.clone()
    n, K, d, mean_d, var = F.shifted_moments(x, (0, 2))
    assert torch.equal(x, before) and x._version == 0
    torch.testing.assert_close(d, x - K, rtol=0, atol=0)
    x64 = x.double()
    mean64 = x64.mean((0, 2), keepdim=True)
    assert ((K.double() - mean64).abs() < 1e-3).all()  # float32 rounding of 1000: ~1e-4
    assert ((K + mean_d).double() - mean64).abs().max() <= 6.2e-5  # half an ulp of 1000
    torch.testing.assert_close((d - mean_d).double(), x64 - mean64, rtol=0, atol=1e-6)
    assert not K.requires_grad


@pytest.mark.parametrize(
    "shape, dims, by_dots",
    [
        ((4, 8, 16, 16), (1, 2, 3), True),  # LayerNorm over (C, H, W): groups of 2048
        ((3, 5, 4, 32, 32), (2, 3, 4), True),  # GroupNorm's grouped view: 4096 per group
        ((2, 3, 1536), (2,), True),  # pieces of 512
        ((2, 24576), (1,), True),  # pieces of 4096, six per group
        ((16, 8, 8, 8), (0, 2, 3), False),  # BatchNorm: strided groups
        ((4, 6, 10, 10), (2, 3), False),  # 100 values: pieces would be too short
        ((4, 8, 16, 16), (2, 3), False),  # 256 values, likewise
        ((0, 8, 16, 16), (1, 2, 3), False),  # nothing to sum
    ],
)
def test_square_mean_is_the_mean_of_squares(shape, dims, by_dots):
    """mean(d^2) per group, from dot products over pieces where groups are contiguous runs
    of 512 values or more (one bmm), from d * d elsewhere."""
    d = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.1
    with mock.patch.object(torch, "bmm", wraps=torch.bmm) as bmm:
        ours = F.square_mean(d, dims)
    assert bmm.called == by_dots
    want = (d.double() ** 2).mean(dims, keepdim=True)
    assert ours.shape == want.shape and ours.dtype == d.dtype
    torch.testing.assert_close(ours.double(), want, rtol=1e-6, atol=0)
    if by_dots:  # a strided view of the same values is summed as d * d
        with mock.patch.object(torch, "bmm", wraps=torch.bmm) as bmm:
            strided = F.square_mean(d.transpose(0, 1).contiguous().transpose(0, 1), dims)
        assert not bmm.called
        torch.testing.assert_close(strided.double(), want, rtol=1e-6, atol=0)


def test_square_mean_by_dots_keeps_a_long_group_accurate():
    """One group of 2^20 values near 1000 (the shifted data of a large offset): a single dot
    product of that length errs by about 6e-6 in float32 here; pieces of 4096 summed by
    torch.sum keep it near float32's rounding (2e-8)."""
    x = torch.randn(1, 2**20, generator=torch.Generator().manual_seed(0)) * 0.01 + 1000
    d = x - x.mean()
    exact = (d.double() ** 2).mean()
    ours = F.square_mean(d, (1,)).double()
    assert ((ours - exact).abs() / exact).item() < 1e-6
    single_chain = (d[0] @ d[0]).double() / d.numel()  # what the pieces avoid
    assert ((single_chain - exact).abs() / exact).item() > 1e-6


@pytest.mark.parametrize("split", [1, 3, 7])
def test_merge_moments_is_the_moments_of_the_union(split):
    """Chan, Golub and LeVeque's pairwise update: merging the (n, mean, M2) of two parts
    gives those of the whole, for parts of unequal size (as on processes with unequal batches)."""
    x = torch.randn(8, 3, 5, dtype=torch.float64) * 2 + 50
    a, b = F.partial_moments(x[:split], (0, 2)), F.partial_moments(x[split:], (0, 2))
    n, mean, m2 = F.merge_moments(a, b)
    n_all, mean_all, m2_all = F.partial_moments(x, (0, 2))
    assert n == n_all
    torch.testing.assert_close(mean, mean_all, **F64)
    torch.testing.assert_close(m2, m2_all, **F64)


def test_moments_first_value_far_from_the_mean():
    """The shift K is each group's mean in float32, not its first value: one padding zero in
    front of values near 1000 does not cost the variance its digits in float32."""
    x = torch.randn(64, 1) * 0.5 + 1000
    x[0, 0] = 0.0
    x = x.expand(64, 3).contiguous().T.reshape(3, 8, 8)  # 3 groups; in each the first value is 0
    mean, var = F.moments(x, (1, 2))
    var64, mean64 = torch.var_mean(x.double(), dim=(1, 2), correction=0, keepdim=True)
    torch.testing.assert_close(var.double(), var64, rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0)


def test_moments_gradient_matches_torch_var_mean():
    """moments is differentiable (SwitchableNorm and double backward rely on it): the shift is
    a constant, the gradients are those of torch.var_mean's."""
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    g_mean, g_var = (
        torch.randn(1, 3, 1, dtype=torch.float64),
        torch.randn(1, 3, 1, dtype=torch.float64),
    )
    mean, var = F.moments(x, (0, 2))
    ours = torch.autograd.grad((mean * g_mean).sum() + (var * g_var).sum(), x)
    var_ref, mean_ref = torch.var_mean(x, dim=(0, 2), correction=0, keepdim=True)
    ref = torch.autograd.grad((mean_ref * g_mean).sum() + (var_ref * g_var).sum(), x)
    torch.testing.assert_close(ours, ref, **F64)


# ---------------------------------------------------------------------------
# Numerical edge cases, each as torch 2.13 (issue 10).
# ---------------------------------------------------------------------------


def _run(fn, x, *args, **kwargs):
    """fn on a copy of x: output, input gradient and the gradients of any weight/bias given."""
    x = x.clone().requires_grad_()
    leaves = [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad]
    y = fn(x, *args, **kwargs)
    torch.manual_seed(3)
    grads = torch.autograd.grad(y, [x, *leaves], torch.randn_like(y))
    return y, *grads


def _same(fn_ours, fn_torch, *args, **kwargs):
    """Both functions on the same arguments (fresh tensor copies): every output and gradient
    equal, NaN == NaN. Returns ours."""

    def copies():
        return [
            t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
            for t in args
        ]

    ours, ref = _run(fn_ours, *copies(), **kwargs), _run(fn_torch, *copies(), **kwargs)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-5, atol=1e-6)
    return ours


def test_instance_norm_eps_zero_constant_map_returns_the_bias():
    """torch's batch_norm kernel defines 1/sigma = 0 when var + eps = 0: a constant instance
    normalizes to 0, the output is the bias, and the gradients are finite."""
    x = torch.randn(2, 3, 4, 4)
    x[0, 1] = 2.5  # one constant (sample, channel) map
    w, b = torch.rand(3, requires_grad=True), torch.randn(3, requires_grad=True)
    y, dx, dw, db = _same(F.instance_norm, TF.instance_norm, x, None, None, w, b, eps=0.0)
    torch.testing.assert_close(y[0, 1], b[1].detach().expand(4, 4))
    assert all(t.isfinite().all() for t in (y, dx, dw, db))


def test_eps_zero_constant_groups_elsewhere_give_nan_like_torch():
    """Elsewhere torch computes 1/0 = inf: layer_norm and group_norm return NaN for a constant
    group with eps = 0, and so does eval-mode batch_norm with a zero running variance."""
    x = torch.randn(2, 4, 3)
    x[1] = 1.5
    y, *_ = _same(F.layer_norm, TF.layer_norm, x, [4, 3], eps=0.0)
    assert y[1].isnan().all() and y[0].isfinite().all()
    y, *_ = _same(F.group_norm, TF.group_norm, x, 2, eps=0.0)
    assert y[1].isnan().all()
    rm, rv = torch.zeros(4), torch.tensor([1.0, 0.0, 2.0, 1.0])
    y, *_ = _same(F.batch_norm, TF.batch_norm, x, rm, rv, training=False, eps=0.0)
    assert y[:, 1].isnan().all()


INFS = {
    "inf-inside": [1.0, 2.0, math.inf, 4.0],
    "inf-first": [math.inf, 2.0, 3.0, 4.0],
    "-inf-first": [-math.inf, 2.0, 3.0, 4.0],
    "both-infs": [math.inf, -math.inf, 3.0, 4.0],
    "nan": [math.nan, 1.0, 2.0, 3.0],
}


@pytest.mark.parametrize("values", list(INFS.values()), ids=list(INFS))
@pytest.mark.parametrize("layer", ["batch_norm", "instance_norm"])
def test_infinite_value_keeps_running_mean_infinite_like_torch(values, layer):
    """One +-inf in a channel: the batch mean is +-inf and the running mean becomes +-inf as
    in torch (not NaN, as an inf - inf correction step would make it); the variance is NaN."""
    bad = torch.tensor(values)
    x = torch.randn(4, 2, 4)
    x[:, 0] = bad if layer == "batch_norm" else x[:, 0]
    if layer == "instance_norm":
        x[1, 0] = bad
    buffers = []
    for fn in (getattr(F, layer), getattr(TF, layer)):
        rm, rv = torch.zeros(2), torch.ones(2)
        kw = {"training": True} if layer == "batch_norm" else {"use_input_stats": True}
        y = fn(x.clone(), rm, rv, **kw)
        buffers.append((y, rm, rv))
    (ya, rma, rva), (yb, rmb, rvb) = buffers
    torch.testing.assert_close(ya, yb, equal_nan=True)
    torch.testing.assert_close(rma, rmb, equal_nan=True)
    torch.testing.assert_close(rva, rvb, equal_nan=True)
    assert rma[1].isfinite() and rva[1].isfinite()  # the other channel is untouched by it


@pytest.mark.parametrize("n", [1, 2, 7])
def test_unbiased_matches_torch_var_even_for_one_value(n):
    x = torch.randn(3, n, dtype=torch.float64)
    _, var = F.moments(x, (1,))
    torch.testing.assert_close(
        F.unbiased(var, n).squeeze(1), x.var(1, unbiased=True), equal_nan=True, **F64
    )
