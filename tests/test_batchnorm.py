"""BatchNorm1d/2d/3d against torch.nn.BatchNorm1d/2d/3d (torch 2.13)."""

from __future__ import annotations

import copy
import inspect
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from twins import params, twins
from twins import step as twin_step

import normtut

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

DIMS = {1: (nn.BatchNorm1d, normtut.BatchNorm1d), 2: (nn.BatchNorm2d, normtut.BatchNorm2d),
        3: (nn.BatchNorm3d, normtut.BatchNorm3d)}  # fmt: skip
SPATIAL = {1: (5,), 2: (3, 4), 3: (2, 3, 2)}
F64 = {"rtol": 1e-9, "atol": 1e-9}
AFFINE = {
    "affine": {"affine": True},
    "no-bias": {"affine": True, "bias": False},
    "none": {"affine": False},
}
TORCH = SimpleNamespace(
    BatchNorm1d=nn.BatchNorm1d, BatchNorm2d=nn.BatchNorm2d, BatchNorm3d=nn.BatchNorm3d
)
OURS = SimpleNamespace(
    BatchNorm1d=normtut.BatchNorm1d,
    BatchNorm2d=normtut.BatchNorm2d,
    BatchNorm3d=normtut.BatchNorm3d,
)


def batch(
    d: int,
    n: int,
    c: int,
    dtype: torch.dtype = torch.float64,
    spatial: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """A random (N, C, *spatial) input, shifted and scaled per channel so that the statistics matter."""
    spatial = SPATIAL[d] if spatial is None else spatial
    x = torch.randn(n, c, *spatial, dtype=torch.float64)
    scale = torch.rand(c, dtype=torch.float64).reshape(1, c, *([1] * len(spatial))) * 3 + 0.5
    return (x * scale + 2.0).to(dtype)


def assert_same_slots(ours: nn.Module, ref: nn.Module, **tol) -> None:
    """Same flags, the same parameter and buffer slots (None included), dtypes and values."""
    for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats", "training"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert list(ours._parameters) == list(ref._parameters)
    assert list(ours._buffers) == list(ref._buffers)
    for slots_a, slots_b in ((ours._parameters, ref._parameters), (ours._buffers, ref._buffers)):
        for k in slots_b:
            a, b = slots_a[k], slots_b[k]
            assert (a is None) == (b is None), k
            if b is not None:
                assert (
                    a.dtype == b.dtype and a.shape == b.shape and a.requires_grad == b.requires_grad
                ), k
                torch.testing.assert_close(a, b, equal_nan=True, **tol)


def step(ours: nn.Module, ref: nn.Module, x: torch.Tensor, **tol) -> None:
    """One forward/backward on both: outputs, input and parameter gradients (then reset), then the state.

    If torch raises, ours must raise the same exception type and leave the same state.
    """
    twin_step(ours, ref, x, state=assert_same_slots, reset_grads=True, match_errors=True, **tol)


# ---------------------------------------------------------------------------
# Construction: signature, names, repr, resets.
# ---------------------------------------------------------------------------

CONFIGS = [
    {},
    {"eps": 1e-3, "momentum": None},
    {"momentum": 0.3, "affine": False},
    {"bias": False},
    {"track_running_stats": False},
    {"affine": False, "track_running_stats": False},
    {"device": "cpu", "dtype": torch.float64},
    {"dtype": torch.float16, "bias": False},
]


@pytest.mark.parametrize("d", [1, 2, 3])
def test_signature(d):
    assert params(DIMS[d][1]) == params(DIMS[d][0])
    assert inspect.signature(DIMS[d][1]).parameters["bias"].kind is inspect.Parameter.KEYWORD_ONLY
    for lib in DIMS[
        d
    ]:  # bias is keyword-only in both: as the 8th positional argument it is refused
        with pytest.raises(TypeError):
            lib(3, 1e-5, 0.1, True, True, None, None, False)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_construction_matches_torch(d, config):
    ours, ref = DIMS[d][1](6, **config), DIMS[d][0](6, **config)
    assert repr(ours) == repr(ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours._version == ref._version == 2
    assert ours.state_dict()._metadata[""]["version"] == ref.state_dict()._metadata[""]["version"]
    assert_same_slots(ours, ref, rtol=0, atol=0)
    if ref.num_batches_tracked is not None:
        assert ours.num_batches_tracked.dtype == torch.long and ours.num_batches_tracked.dim() == 0


def test_positional_arguments_and_repr_values():
    args = (5, 1e-3, None, False, False)
    assert repr(normtut.BatchNorm2d(*args)) == repr(nn.BatchNorm2d(*args))
    assert repr(normtut.BatchNorm3d(4, momentum=0.25, bias=False)) == repr(
        nn.BatchNorm3d(4, momentum=0.25, bias=False)
    )
    seq_ours, seq_ref = nn.Sequential(normtut.BatchNorm1d(3)), nn.Sequential(nn.BatchNorm1d(3))
    assert repr(seq_ours) == repr(seq_ref)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("affine", list(AFFINE))
@pytest.mark.parametrize("track", [True, False])
def test_resets(d, affine, track):
    torch.manual_seed(0)
    ours, ref = twins(DIMS[d], 3, track_running_stats=track, **AFFINE[affine])
    for _ in range(3):
        step(ours, ref, batch(d, 4, 3, torch.float32), rtol=1e-5, atol=1e-5)
    ours.reset_running_stats()
    ref.reset_running_stats()
    assert_same_slots(ours, ref, rtol=1e-6, atol=1e-6)  # parameters kept, buffers reset
    if affine != "none":
        assert not torch.equal(ref.weight, torch.ones(3))  # the parameters were not reset
    ours.reset_parameters()
    ref.reset_parameters()
    assert_same_slots(ours, ref, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Behaviour over several steps: train/eval x tracking x affine x momentum.
# ---------------------------------------------------------------------------

MODES = ["train", "train", "eval", "train", "eval", "train"]


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("affine", list(AFFINE))
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("flip", [False, True], ids=["kept", "flipped"])
def test_steps_match_torch(d, momentum, affine, track, flip):
    """Six steps; with "flipped", track_running_stats is toggled on the built layers before step 3."""
    torch.manual_seed(d)
    ours, ref = twins(
        DIMS[d],
        4,
        momentum=momentum,
        track_running_stats=track,
        dtype=torch.float64,
        **AFFINE[affine],
    )
    for i, mode in enumerate(MODES):
        if flip and i == 3:
            ours.track_running_stats = ref.track_running_stats = not track
        ours.train(mode == "train")
        ref.train(mode == "train")
        step(ours, ref, batch(d, 3, 4), **F64)


@st.composite
def scenarios(draw):
    d = draw(st.sampled_from([1, 2, 3]))
    rank = {1: draw(st.sampled_from([0, 1])), 2: 2, 3: 3}[
        d
    ]  # BatchNorm1d takes (N, C) and (N, C, L)
    return {
        "d": d,
        "c": draw(st.integers(1, 4)),
        "n": draw(st.integers(0, 4)),
        "spatial": tuple(draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))),
        "momentum": draw(st.sampled_from([0.1, 0.3, None, 0.0, 1.0])),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        "affine": draw(st.sampled_from(list(AFFINE))),
        "track": draw(st.booleans()),
        "actions": draw(
            st.lists(st.sampled_from(["train", "eval", "flip"]), min_size=1, max_size=7)
        ),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@settings(max_examples=150, deadline=None, derandomize=True)
@given(scenarios())
def test_random_scenarios_match_torch(s):
    """Random shapes (batch sizes 0 and 1 included), flags and sequences of train/eval/flip steps."""
    torch.manual_seed(s["seed"])
    kw = {
        "momentum": s["momentum"],
        "eps": s["eps"],
        "track_running_stats": s["track"],
        **AFFINE[s["affine"]],
    }
    ours, ref = twins(DIMS[s["d"]], s["c"], dtype=torch.float64, **kw)
    for action in s["actions"]:
        if action == "flip":
            ours.track_running_stats = ref.track_running_stats = not ref.track_running_stats
            continue
        ours.train(action == "train")
        ref.train(action == "train")
        step(ours, ref, batch(s["d"], s["n"], s["c"], spatial=s["spatial"]), **F64)


# ---------------------------------------------------------------------------
# state_dict in both directions, and checkpoints from before num_batches_tracked.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("config", CONFIGS[:6], ids=str)
@pytest.mark.parametrize("direction", ["ours->torch", "torch->ours"])
def test_state_dict_round_trip(d, config, direction):
    torch.manual_seed(1)
    ours, ref = twins(DIMS[d], 3, **config)
    src_ours = direction == "ours->torch"
    src = ours if src_ours else ref
    src.train()
    opt = torch.optim.SGD(src.parameters(), lr=0.5) if config.get("affine", True) else None
    for _ in range(4):  # a few training steps so that every value is non-trivial
        y = src(batch(d, 4, 3, torch.float32))
        if opt is not None:
            opt.zero_grad()
            (y * torch.randn_like(y)).sum().backward()
            opt.step()
    fresh_ours, fresh_ref = DIMS[d][1](3, **config), DIMS[d][0](3, **config)
    dst = fresh_ref if src_ours else fresh_ours
    result = dst.load_state_dict(src.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_slots(dst, src, rtol=0, atol=0)
    src.eval()
    dst.eval()
    x = batch(d, 2, 3, torch.float32)
    torch.testing.assert_close(dst(x), src(x), rtol=1e-5, atol=1e-5)


def old_checkpoint(sd: dict, prefix: str, how: str) -> dict:
    """A state_dict as saved before num_batches_tracked existed (BatchNorm version 1)."""
    sd = copy.deepcopy(sd)
    del sd[prefix + "num_batches_tracked"]
    if how == "version-1":
        sd._metadata[prefix.rstrip(".")]["version"] = 1
    elif how == "no-version":
        del sd._metadata[prefix.rstrip(".")]["version"]
    else:
        del sd._metadata
    return sd


@pytest.mark.parametrize("how", ["version-1", "no-version", "no-metadata"])
@pytest.mark.parametrize("trained_destination", [False, True])
@pytest.mark.parametrize("wrapped", [False, True])
def test_old_checkpoint_without_num_batches_tracked(how, trained_destination, wrapped):
    """torch keeps the destination's own counter (0 when fresh); ours must do the same."""
    torch.manual_seed(2)
    source = nn.BatchNorm2d(3)
    for _ in range(5):
        source(batch(2, 4, 3, torch.float32))
    dst_ours, dst_ref = twins(DIMS[2], 3)
    if trained_destination:
        for _ in range(2):
            x = batch(2, 4, 3, torch.float32)
            dst_ours(x)
            dst_ref(x)
    prefix = "1." if wrapped else ""
    if wrapped:
        source = nn.Sequential(nn.Identity(), source)
        dst_ours, dst_ref = (
            nn.Sequential(nn.Identity(), dst_ours),
            nn.Sequential(nn.Identity(), dst_ref),
        )
    sd = old_checkpoint(source.state_dict(), prefix, how)
    r_ref = dst_ref.load_state_dict(copy.deepcopy(sd))
    r_ours = dst_ours.load_state_dict(copy.deepcopy(sd))
    assert (
        r_ours.missing_keys == r_ref.missing_keys == []
        and r_ours.unexpected_keys == r_ref.unexpected_keys == []
    )
    assert_same_slots(
        dst_ours[-1] if wrapped else dst_ours, dst_ref[-1] if wrapped else dst_ref, rtol=0, atol=0
    )
    ref_bn = dst_ref[-1] if wrapped else dst_ref
    assert int(ref_bn.num_batches_tracked) == (
        2 if trained_destination else 0
    )  # the counter was not in sd


def test_old_checkpoint_into_meta_layer():
    """A layer built on the meta device has no counter to keep: both start the loaded one at 0."""
    torch.manual_seed(2)
    source = nn.BatchNorm2d(3)
    for _ in range(3):
        source(batch(2, 4, 3, torch.float32))
    sd = old_checkpoint(source.state_dict(), "", "version-1")
    ours, ref = normtut.BatchNorm2d(3, device="meta"), nn.BatchNorm2d(3, device="meta")
    assert ours.num_batches_tracked.device == ref.num_batches_tracked.device == torch.device("meta")
    ref.load_state_dict(copy.deepcopy(sd), assign=True)
    ours.load_state_dict(copy.deepcopy(sd), assign=True)
    assert_same_slots(ours, ref, rtol=0, atol=0)
    assert ours.num_batches_tracked.device == torch.device("cpu")


def test_version_2_checkpoint_missing_num_batches_tracked_is_an_error():
    sd = nn.BatchNorm1d(3).state_dict()
    del sd["num_batches_tracked"]  # still version 2: the key is required
    errors = []
    for lib in (nn.BatchNorm1d, normtut.BatchNorm1d):
        with pytest.raises(RuntimeError) as e:
            lib(3).load_state_dict(copy.deepcopy(sd))
        errors.append(e.value)
        assert lib(3).load_state_dict(copy.deepcopy(sd), strict=False).missing_keys == [
            "num_batches_tracked"
        ]
    assert "num_batches_tracked" in str(errors[1])


def test_old_checkpoint_into_untracked_layer():
    """Without running stats nothing is added: an old affine-only checkpoint loads as in torch."""
    sd = nn.BatchNorm1d(3, track_running_stats=False).state_dict()
    sd._metadata[""]["version"] = 1
    for lib in (nn.BatchNorm1d, normtut.BatchNorm1d):
        r = lib(3, track_running_stats=False).load_state_dict(copy.deepcopy(sd))
        assert r.missing_keys == [] and r.unexpected_keys == []


# ---------------------------------------------------------------------------
# Errors: the same exception types as torch, with messages that say what is wrong.
# ---------------------------------------------------------------------------


def _train(L, cls, x, **kw):
    return getattr(L, cls)(x.shape[1] if x.dim() > 1 else 3, **kw).train()(x)


def _eval(L, cls, x, **kw):
    return getattr(L, cls)(x.shape[1] if x.dim() > 1 else 3, **kw).eval()(x)


MODULE_ERRORS = [
    ("1d-4d-input", lambda L: _train(L, "BatchNorm1d", torch.randn(2, 3, 4, 5)), ["2D or 3D", "4D"]),
    ("1d-1d-input", lambda L: _eval(L, "BatchNorm1d", torch.randn(5)), ["2D or 3D", "1D"]),
    ("2d-3d-input", lambda L: _train(L, "BatchNorm2d", torch.randn(2, 3, 4)), ["4D", "3D"]),
    ("2d-5d-input", lambda L: _eval(L, "BatchNorm2d", torch.randn(2, 3, 4, 4, 4)), ["4D", "5D"]),
    ("3d-4d-input", lambda L: _train(L, "BatchNorm3d", torch.randn(2, 3, 4, 4)), ["5D", "4D"]),
    ("1d-one-value", lambda L: _train(L, "BatchNorm1d", torch.randn(1, 3)), ["more than 1 value per channel"]),
    ("1d-one-value-3d", lambda L: _train(L, "BatchNorm1d", torch.randn(1, 3, 1)), ["more than 1 value per channel"]),
    ("2d-one-value", lambda L: _train(L, "BatchNorm2d", torch.randn(1, 3, 1, 1)), ["more than 1 value per channel"]),
    ("3d-one-value", lambda L: _train(L, "BatchNorm3d", torch.randn(1, 3, 1, 1, 1)), ["more than 1 value per channel"]),
    ("3d-one-value-untracked", lambda L: _train(L, "BatchNorm3d", torch.randn(1, 2, 1, 1, 1), affine=False,
                                                track_running_stats=False), ["more than 1 value per channel"]),
    ("wrong-num-features-train", lambda L: L.BatchNorm2d(4)(torch.randn(2, 3, 4, 4)), ["running_mean", "3", "4"]),
    ("wrong-num-features-eval", lambda L: L.BatchNorm2d(4).eval()(torch.randn(2, 3, 4, 4)), ["running_mean", "3", "4"]),
    ("wrong-num-features-weight", lambda L: L.BatchNorm1d(4, track_running_stats=False)(torch.randn(2, 3)),
     ["weight", "3", "4"]),
    ("eps-zero-train", lambda L: _train(L, "BatchNorm1d", torch.randn(4, 3), eps=0.0), ["eps", "positive"]),
    ("eps-negative-eval", lambda L: _eval(L, "BatchNorm2d", torch.randn(4, 3, 2, 2), eps=-1e-5), ["eps"]),
    ("int-input", lambda L: _train(L, "BatchNorm2d", torch.randint(0, 5, (4, 3, 2, 2))), ["batch_norm", "int64"]),
    ("int-input-eval", lambda L: _eval(L, "BatchNorm1d", torch.randint(0, 5, (4, 3))), ["batch_norm", "int64"]),
    ("bool-input-untracked", lambda L: _train(L, "BatchNorm1d", torch.ones(4, 3, dtype=torch.bool), affine=False,
                                              track_running_stats=False), ["batch_norm", "bool"]),
    ("float64-into-float32", lambda L: _train(L, "BatchNorm1d", torch.randn(4, 3, dtype=torch.float64)),
     ["float64", "float32"]),
    ("float64-into-float32-eval", lambda L: _eval(L, "BatchNorm2d", torch.randn(4, 3, 2, 2, dtype=torch.float64)),
     ["float64", "float32"]),
    ("float32-into-float64", lambda L: _train(L, "BatchNorm1d", torch.randn(4, 3), dtype=torch.float64),
     ["float32", "float64"]),
    ("float32-into-float16", lambda L: _train(L, "BatchNorm1d", torch.randn(4, 3), dtype=torch.float16),
     ["float32", "float16"]),
    ("float16-into-bfloat16", lambda L: _train(L, "BatchNorm1d", torch.randn(4, 3).half(), dtype=torch.bfloat16),
     ["float16", "bfloat16"]),
    ("float16-into-float64", lambda L: _eval(L, "BatchNorm1d", torch.randn(4, 3).half(), dtype=torch.float64),
     ["float16", "float64"]),
]  # fmt: skip


@pytest.mark.parametrize("case", MODULE_ERRORS, ids=[c[0] for c in MODULE_ERRORS])
def test_module_errors_match_torch(case):
    _, call, words = case
    with pytest.raises(Exception) as theirs:
        call(TORCH)
    with pytest.raises(Exception) as ours:
        call(OURS)
    assert type(ours.value) is type(theirs.value)
    for word in words:
        assert word in str(ours.value), (word, str(ours.value))


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 2, 1, 1), (1, 2, 1, 1, 1)])
def test_one_value_per_channel_message_is_torchs(shape):
    d = max(1, len(shape) - 2)
    msgs = []
    for lib in DIMS[d]:
        with pytest.raises(ValueError) as e:
            lib(shape[1])(torch.randn(shape))
        msgs.append(str(e.value))
    assert msgs[1] == msgs[0]
    assert msgs[1].startswith(
        "Expected more than 1 value per channel when training, got input size"
    )


@pytest.mark.parametrize("d", [1, 2, 3])
def test_one_value_per_channel_is_fine_in_eval_and_with_eps_zero(d):
    ours, ref = twins(DIMS[d], 3, dtype=torch.float64)
    ours.eval()
    ref.eval()
    step(ours, ref, batch(d, 1, 3, spatial=(1,) * len(SPATIAL[d])), **F64)
    ours.eps = ref.eps = 0.0  # eps = 0 is allowed in eval
    step(ours, ref, batch(d, 2, 3), **F64)


# ---------------------------------------------------------------------------
# Empty batches.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", list(AFFINE))
def test_zero_size_batch(d, momentum, affine):
    """An empty batch: same output and gradients, buffers untouched, the counter still moves."""
    torch.manual_seed(3)
    ours, ref = twins(DIMS[d], 3, momentum=momentum, dtype=torch.float64, **AFFINE[affine])
    step(ours, ref, batch(d, 4, 3), **F64)
    before = copy.deepcopy(ours.state_dict())
    for mode in ("train", "eval", "train"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        step(ours, ref, batch(d, 0, 3), **F64)
    assert int(ours.num_batches_tracked) == int(before["num_batches_tracked"]) + 2
    torch.testing.assert_close(ours.running_mean, before["running_mean"], rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, before["running_var"], rtol=0, atol=0)
    ours.train()
    ref.train()
    step(
        ours, ref, batch(d, 4, 3), **F64
    )  # with momentum=None the next batch weighs 1/4, as in torch


@pytest.mark.parametrize("shape", [(4, 0), (4, 0, 5), (4, 3, 0), (2, 3, 0, 4)])
def test_other_empty_inputs(shape):
    d = max(1, len(shape) - 2)
    ours, ref = twins(DIMS[d], shape[1], dtype=torch.float64)
    step(ours, ref, torch.randn(shape, dtype=torch.float64), **F64)
    assert int(ours.num_batches_tracked) == 1


# ---------------------------------------------------------------------------
# Numerics: large offsets, float16/bfloat16.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2])
def test_large_offset_float32(d):
    """x = 1000 + 0.01 z in float32: normalized as well as torch does; the one-pass formula fails."""
    torch.manual_seed(4)
    ours, ref = twins(DIMS[d], 4)
    x = torch.randn(64, 4, *SPATIAL[d][:d]) * 0.01 + 1000
    dims = [0, *range(2, x.dim())]
    ya, yb = ours(x), ref(x)
    x64 = x.double()  # the exact answer for these float32 values, from float64 torch
    exact = (x64 - x64.mean(dims, keepdim=True)) / torch.sqrt(
        x64.var(dims, correction=0, keepdim=True) + 1e-5
    )
    exact = exact * ref.weight.double().reshape(1, 4, *[1] * (x.dim() - 2))
    exact = exact + ref.bias.double().reshape(1, 4, *[1] * (x.dim() - 2))
    err_ours, err_ref = (ya - exact).abs().max().item(), (yb - exact).abs().max().item()
    assert (
        err_ours < 0.01 and err_ref < 0.05
    )  # of outputs of size ~1: a few float32 ulps of 1000 / 0.01
    torch.testing.assert_close(ya, yb, rtol=0, atol=0.05)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-6, atol=0)
    # The one-pass E[x^2] - E[x]^2 in float32 loses every digit of a variance of 1e-4.
    naive = (x * x).mean(dims) - x.mean(dims) ** 2
    rel = (naive.double() - x64.var(dims, correction=0)).abs() / x64.var(dims, correction=0)
    assert rel.max() > 1.0


LOW = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("module_dtype", ["float32", "same"])
@pytest.mark.parametrize("d", [1, 2])
def test_low_precision_inputs(dtype, module_dtype, d):
    """Values near 300: x^2 overflows float16. Computed in float32, returned in the input's dtype.

    Ours is checked against torch in float64 on the same values (one rounding allowed) and
    against torch's float16/bfloat16 path, which is less exact when the module is low precision.
    """
    torch.manual_seed(5)
    ours, ref = twins(DIMS[d], 4)
    if module_dtype == "same":
        ours.to(dtype)
        ref.to(dtype)
    assert ours.num_batches_tracked.dtype == torch.long
    x = (300 + 10 * torch.randn(32, 4, *SPATIAL[d][:d])).to(dtype)
    if dtype == torch.float16:
        assert torch.isinf(x * x).any()  # the squares do not fit in float16
    eps = torch.finfo(dtype).eps
    for mode in ("train", "train", "eval"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        buffers = [b.detach().double().clone() for b in (ours.running_mean, ours.running_var)]
        x64 = x.double().requires_grad_()
        w64, b64 = (p.detach().double().requires_grad_() for p in (ref.weight, ref.bias))
        exact = TF.batch_norm(x64, *buffers, w64, b64, training=mode == "train")
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        assert ya.dtype == yb.dtype == dtype and torch.isfinite(ya).all()
        assert (
            (ya.double() - exact).abs() <= eps * (exact.abs() + 1)
        ).all()  # one rounding to the output dtype
        g = torch.randn_like(yb)
        for y, t in ((ya, g), (yb, g), (exact, g.double())):
            y.backward(t)
        assert xa.grad.dtype == xb.grad.dtype == dtype
        torch.testing.assert_close(
            xa.grad.double(), x64.grad, rtol=2 * eps, atol=2 * eps * x64.grad.abs().max()
        )
        torch.testing.assert_close(
            xa.grad, xb.grad, rtol=4 * eps, atol=4 * eps * x64.grad.abs().max()
        )
        for pa, pb, p64 in ((ours.weight, ref.weight, w64), (ours.bias, ref.bias, b64)):
            assert pa.grad.dtype == pb.grad.dtype == pb.dtype
            torch.testing.assert_close(pa.grad.double(), p64.grad, rtol=2 * eps, atol=1e-3)
        # buffers (float64 F.batch_norm updated its copies in place): one rounding from exact
        for ba, bb, exact_b in zip(
            (ours.running_mean, ours.running_var),
            (ref.running_mean, ref.running_var),
            buffers,
            strict=True,
        ):
            assert ba.dtype == bb.dtype
            if (
                ba.dtype in LOW
            ):  # rounded once: within half a unit in the last place (plus float32 noise)
                ulp = 2.0 ** torch.floor(torch.log2(exact_b.abs())) * torch.finfo(ba.dtype).eps
                assert ((ba.double() - exact_b).abs() <= 0.5 * ulp + 1e-6 * exact_b.abs()).all()
            else:  # float32 buffers: the float32 sums round too
                torch.testing.assert_close(
                    ba.double(), exact_b, rtol=8 * torch.finfo(ba.dtype).eps, atol=0
                )
            torch.testing.assert_close(
                ba, bb, rtol=32 * torch.finfo(ba.dtype).eps, atol=0
            )  # torch's rounds more
        assert torch.equal(ours.num_batches_tracked, ref.num_batches_tracked)
        if module_dtype == "same" and mode == "train":
            # torch 2.13 rounds the batch mean to the module's dtype before it normalizes: a 300 is
            # 0.25 from the next float16 (2 in bfloat16), up to 1/80 (1/10) of a std of 10. Every x_hat
            # moves by delta = (mean - rounded mean) / std, and the weight's gradient by delta * sum(g).
            dims = [0, *range(2, x.dim())]
            mean, std = x.double().mean(dims), x.double().var(dims, correction=0).sqrt()
            delta = (mean - mean.to(dtype).double()).abs() / std
            tol = 2 * eps * (exact.abs().max() + 1)
            shift = delta.reshape(1, 4, *[1] * d) * ref.weight.double().abs().reshape(
                1, 4, *[1] * d
            )
            assert ((ya.double() - yb.double()).abs() <= shift + tol).all()
            gw_gap = (ours.weight.grad.double() - ref.weight.grad.double()).abs()
            assert (gw_gap <= delta * b64.grad.abs() + 2 * eps * w64.grad.abs() + 1e-2).all()
        else:
            torch.testing.assert_close(ya, yb, rtol=2 * eps, atol=2 * eps)
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=2 * eps, atol=1e-3)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=2 * eps, atol=1e-3)
        for p in (*ours.parameters(), *ref.parameters()):
            p.grad = None


# ---------------------------------------------------------------------------
# As a part of a model: Sequential, .to(), deepcopy.
# ---------------------------------------------------------------------------


def test_inside_sequential_with_sgd():
    torch.manual_seed(6)
    lin = nn.Linear(5, 3)
    conv = nn.Conv2d(3, 2, 3, padding=1)

    def model(lib) -> nn.Sequential:
        head = [copy.deepcopy(lin), lib.BatchNorm1d(3), nn.ReLU(), nn.Unflatten(1, (3, 1, 1))]
        return nn.Sequential(
            *head,
            nn.Upsample(scale_factor=4),
            copy.deepcopy(conv),
            lib.BatchNorm2d(2, momentum=None),
        )

    ref, ours = model(TORCH), model(OURS)
    assert list(ours.state_dict()) == list(ref.state_dict())
    opt_ours, opt_ref = (
        torch.optim.SGD(ours.parameters(), lr=0.1),
        torch.optim.SGD(ref.parameters(), lr=0.1),
    )
    for i in range(5):
        x = torch.randn(6, 5)
        for model in (ours, ref):
            model.train(i != 3)
        ya, yb = ours(x), ref(x)
        torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
        for y, opt in ((ya, opt_ours), (yb, opt_ref)):
            opt.zero_grad()
            (y**2).mean().backward()
            opt.step()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_to_float64_and_half(d):
    torch.manual_seed(7)
    ours, ref = twins(DIMS[d], 3)
    step(ours, ref, batch(d, 4, 3, torch.float32), rtol=1e-5, atol=1e-5)
    ours.to(torch.float64)
    ref.to(torch.float64)
    assert_same_slots(ours, ref, rtol=1e-6, atol=1e-6)
    assert ours.num_batches_tracked.dtype == torch.long  # integer buffers are not converted
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        step(ours, ref, batch(d, 4, 3), rtol=1e-6, atol=1e-6)
    ours.half()
    ref.half()
    assert_same_slots(ours, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_deepcopy(d):
    torch.manual_seed(8)
    ours, ref = twins(DIMS[d], 3, momentum=None, dtype=torch.float64)
    step(ours, ref, batch(d, 4, 3), **F64)
    ours_copy, ref_copy = copy.deepcopy(ours), copy.deepcopy(ref)
    assert type(ours_copy) is type(ours) and ours_copy.running_mean is not ours.running_mean
    assert_same_slots(ours_copy, ref_copy, **F64)
    for _ in range(2):  # training the copies leaves the originals alone, in both libraries
        step(ours_copy, ref_copy, batch(d, 4, 3), **F64)
    assert_same_slots(ours, ref, **F64)
    assert int(ours.num_batches_tracked) == 1 and int(ours_copy.num_batches_tracked) == 3


@pytest.mark.parametrize(
    "classes", [(nn.BatchNorm2d, normtut.BatchNorm2d), (nn.InstanceNorm2d, normtut.InstanceNorm2d)]
)
def test_reset_parameters_after_flipping_affine_on(classes):
    """affine set to True on a layer built without it: reset_parameters() fails as torch's does."""
    for cls in classes:
        layer = cls(3, affine=False)
        layer.affine = True
        with pytest.raises(AttributeError, match="NoneType"):
            layer.reset_parameters()
