"""normtut.SyncBatchNorm against torch: real processes (gloo on 127.0.0.1), and one process.

Across processes the reference is a single-process ``torch.nn.BatchNorm`` on the whole batch
(torch's own SyncBatchNorm refuses CPU input under a process group): the ranks' outputs and
input gradients, put together, must be its outputs and input gradient; their weight and bias
gradients, summed, its gradients; every rank's buffers its buffers, after each of 5 steps,
then in eval. Each world size starts its processes once (``sync_workers.run_all``), bounded
in time by ``launch``.
"""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import sync_workers as W
import torch
import torch.distributed as dist
from sync_workers import Case
from torch import nn
from twins import F32, F64, assert_same_state, params, randomize

import normtut
from normtut.experiments.distributed import launch

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    2: [
        Case("equal 2-D", (8, 5), (4, 4)),
        Case("uneven 4-D", (7, 3, 4, 5), (5, 2)),
        Case("rank 0 empty, 4-D", (6, 3, 3, 3), (0, 6)),
        Case("momentum None, 3-D", (6, 4, 7), (2, 4), momentum=None),
        Case("one sample per rank", (2, 3), (1, 1)),
        Case("channels_last", (6, 3, 4, 4), (2, 4), channels_last=True),
        Case("float64 5-D", (4, 2, 3, 3, 2), (3, 1), dtype=torch.float64),
        Case("no affine", (6, 3), (3, 3), affine=False),
        Case("no bias", (6, 3, 2), (4, 2), bias=False),
        Case("no running stats", (6, 3, 2, 2), (2, 4), track_running_stats=False),
        Case("bfloat16", (6, 3, 4), (4, 2), dtype=torch.bfloat16),
        Case("nobody has a sample", (0, 3, 2), (0, 0)),
        Case("one value in all", (1, 3), (1, 0)),
    ],
    3: [
        Case("equal 2-D", (9, 4), (3, 3, 3)),
        Case("uneven 4-D", (8, 3, 4, 4), (3, 1, 4)),
        Case("rank 1 empty, 2-D", (5, 4), (2, 0, 3)),
        Case("5-D", (4, 2, 2, 3, 3), (1, 2, 1)),
        Case("momentum None, 3-D", (6, 3, 5), (2, 3, 1), momentum=None),
    ],
}
DDP_SPLIT = {2: (3, 5), 3: (3, 1, 4)}
SUBGROUP = Case("ranks 0 and 2 together", (7, 3, 2), (3, 2, 2))  # 3 ranks, group [0, 2]
REFERENCE = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


@pytest.fixture(scope="module")
def ranks() -> dict[int, list[dict]]:
    """What each rank of a 2-process and a 3-process launch returned."""
    subgroup = {2: None, 3: (SUBGROUP, [0, 2])}
    return {
        w: launch(W.run_all, w, CASES[w], DDP_SPLIT[w], subgroup[w], timeout=240) for w in (2, 3)
    }


def reference(case: Case, rank: int | None = None) -> dict:
    """torch's BatchNorm on the whole batch, the same steps.

    With ``rank``, eval sees that rank's slice only (where eval does not synchronize).
    """
    layer = REFERENCE[len(case.shape)](
        case.shape[1], momentum=case.momentum, affine=case.affine, bias=case.bias,
        track_running_stats=case.track_running_stats, dtype=case.dtype,
    )  # fmt: skip
    return W.layer_steps(layer, case, rank or 0, eval_split=None if rank is None else case.split)


BF16 = {"rtol": 2e-2, "atol": 2e-2}  # bfloat16 against torch's: 8 bits of mantissa


def close(a, b, case: Case, scale: float = 1.0) -> None:
    tol = {torch.float64: F64, torch.bfloat16: BF16}.get(case.dtype, F32)
    torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize(
    "world, case",
    [(w, c) for w, cases in CASES.items() for c in cases],
    ids=[f"{w} ranks, {c.name}" for w, cases in CASES.items() for c in cases],
)
def test_split_batch_matches_batchnorm_on_the_whole_batch(ranks, world, case):
    ours = [r["cases"][case.name] for r in ranks[world]]
    ref = reference(case)
    if "error" in ref:  # every rank raises what BatchNorm raises on the whole batch
        assert [o.get("error") for o in ours] == [ref["error"]] * world
        return
    assert all("error" not in o for o in ours), [o.get("error") for o in ours]
    pairs, _ = W.data(case)
    for step, want in enumerate(ref["steps"]):
        got = [o["steps"][step] for o in ours]
        close(torch.cat([g["y"] for g in got]), want["y"], case)
        close(torch.cat([g["dx"] for g in got]), want["dx"], case)
        for name in ("dweight", "dbias"):
            if want[name] is None:
                assert all(g[name] is None for g in got)
            else:  # each rank's own sums; DDP adds them up
                close(sum(g[name] for g in got), want[name], case, scale=10)
        for g in got:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                close(g[name], want[name], case)
        for rank, g in enumerate(got):  # torch's layout for this rank's slice
            x = W.part(pairs[step][0], case.split, rank)
            layout = REFERENCE[x.dim()](x.shape[1], dtype=x.dtype).eval()(x).stride()
            assert g["y_stride"] == g["dx_stride"] == layout
    if case.track_running_stats:
        close(torch.cat([o["eval"] for o in ours]), ref["eval"], case)
    else:  # eval never synchronizes: each rank normalizes its own slice, as torch's does
        for rank, o in enumerate(ours):
            close(o["eval"], reference(case, rank)["eval"], case)


def test_a_process_group_of_some_ranks(ranks):
    """3 ranks, process_group = ranks 0 and 2: they share statistics, rank 1 is alone."""
    got = [r["subgroup"] for r in ranks[3]]
    pairs, _ = W.data(SUBGROUP)
    weight, bias = W.affine_values(SUBGROUP)
    for members in ([0, 2], [1]):
        ref = nn.BatchNorm1d(3)
        with torch.no_grad():
            ref.weight.copy_(weight)
            ref.bias.copy_(bias)
        for step, (x, dy) in enumerate(pairs):
            xs = [W.part(x, SUBGROUP.split, r).detach().requires_grad_() for r in members]
            y = ref(torch.cat(xs))
            y.backward(torch.cat([W.part(dy, SUBGROUP.split, r) for r in members]))
            ours = [got[r]["steps"][step] for r in members]
            close(torch.cat([o["y"] for o in ours]), y.detach(), SUBGROUP)
            close(torch.cat([o["dx"] for o in ours]), torch.cat([t.grad for t in xs]), SUBGROUP)
            for o in ours:
                close(o["running_var"], ref.running_var, SUBGROUP)


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_training_matches_one_process_on_the_whole_batch(ranks, world):
    """5 SGD steps of a convnet whose BatchNorms (torch's and normtut's) were converted."""
    model = W.ddp_model()
    W.train(model, W.ddp_batches(sum(DDP_SPLIT[world])))
    want = model.state_dict()
    for r in ranks[world]:
        got = r["ddp"]
        assert list(got) == list(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("world", [2, 3])
def test_running_buffers_hold_the_global_mean_and_unbiased_variance(ranks, world):
    """PyTorch's own test (never run without a GPU): momentum 0.99, 100 steps, uneven slices."""
    slices = [W.running_value_input(r) for r in range(world)]  # [2, 2, 2^(r+1)]
    values = torch.cat([x.transpose(0, 1).reshape(2, -1) for x in slices], 1).double()
    mean = values.mean(1)
    var = ((values - mean[:, None]) ** 2).sum(1) / (values.shape[1] - 1)  # unbiased
    for r in ranks[world]:
        running_mean, running_var = r["running_value"]
        torch.testing.assert_close(running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert [r["rank"] for r in ranks[world]] == list(range(world))


# ---------------------------------------------------------------------------
# One process.
# ---------------------------------------------------------------------------


def test_signature_repr_and_state_dict_are_torchs():
    assert params(normtut.SyncBatchNorm) == params(nn.SyncBatchNorm)
    for kwargs in ({}, {"affine": False}, {"track_running_stats": False}, {"bias": False},
                   {"momentum": None, "eps": 1e-3, "dtype": torch.float64}):  # fmt: skip
        ours, ref = normtut.SyncBatchNorm(5, **kwargs), nn.SyncBatchNorm(5, **kwargs)
        assert repr(ours) == repr(ref)
        a, b = ours.state_dict(), ref.state_dict()
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        assert ours._version == ref._version and ours.process_group is None
        ours.load_state_dict(b)
        ref.load_state_dict(a)


def _mixed_model() -> nn.Sequential:
    """torch's and normtut's BatchNorm1d/2d/3d, nested, float64, one layer in eval."""
    model = nn.Sequential(
        nn.BatchNorm1d(3), normtut.BatchNorm1d(3, affine=False),
        nn.Sequential(nn.BatchNorm2d(4, bias=False), normtut.BatchNorm2d(4)),
        nn.BatchNorm3d(2, track_running_stats=False), normtut.BatchNorm3d(2, momentum=None),
        nn.ReLU(), normtut.GroupNorm(1, 2),
    ).double()  # fmt: skip
    model[0].weight.requires_grad_(False)
    model[2][1].eval()
    model[3].qconfig = "a qconfig"
    return model


def test_convert_sync_batchnorm_takes_over_parameters_and_buffers():
    model = _mixed_model()
    layers = [model[0], model[1], model[2][0], model[2][1], model[3], model[4]]
    tensors = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]}
    group = object()  # any process group object is only stored
    converted = normtut.SyncBatchNorm.convert_sync_batchnorm(model, group)
    assert converted is model
    new = [model[0], model[1], model[2][0], model[2][1], model[3], model[4]]
    assert all(type(m) is normtut.SyncBatchNorm for m in new)
    assert type(model[5]) is nn.ReLU and type(model[6]) is normtut.GroupNorm
    for old, m in zip(layers, new, strict=True):
        for attr in (
            "num_features",
            "eps",
            "momentum",
            "affine",
            "track_running_stats",
            "training",
        ):
            assert getattr(m, attr) == getattr(old, attr), attr
        assert m.process_group is group
    after = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]}
    assert list(after) == list(tensors)
    assert all(after[n] is tensors[n] for n in tensors)  # the same objects: dtype, device kept
    assert model[0].weight.requires_grad is False and model[3].qconfig == "a qconfig"
    assert model[2][0].bias is None and model[3].running_mean is None


def test_convert_sync_batchnorm_does_to_torch_layers_what_torchs_does():
    ours = normtut.SyncBatchNorm.convert_sync_batchnorm(_mixed_model())
    ref = nn.SyncBatchNorm.convert_sync_batchnorm(_mixed_model())
    converted = 0
    for (name, a), (_, b) in zip(ours.named_modules(), ref.named_modules(), strict=True):
        if isinstance(b, nn.SyncBatchNorm):  # torch's converter skips normtut's layers
            public = [{k: v for k, v in vars(m).items() if not k.startswith("_")} for m in (a, b)]
            assert public[0] == public[1], name
            assert_same_state(a, b)
            grads = [[p.requires_grad for p in m.parameters()] for m in (a, b)]
            assert grads[0] == grads[1]
            converted += 1
    assert converted == 3
    bn = nn.BatchNorm2d(3)
    single = normtut.SyncBatchNorm.convert_sync_batchnorm(bn)  # a layer: a new layer back
    assert type(single) is normtut.SyncBatchNorm and single.weight is bn.weight


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 4), (4, 3, 3, 2), (3, 3, 2, 2, 2)])
def test_without_a_process_group_it_is_batchnorm(shape, momentum):
    assert not dist.is_initialized()
    ours = normtut.SyncBatchNorm(3, momentum=momentum)
    ref = nn.SyncBatchNorm(3, momentum=momentum)  # torch's: BatchNorm without a group
    randomize(ref, ours)
    for _ in range(3):
        x = torch.randn(shape) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        dy = torch.randn(shape)
        ours(xa).backward(dy)
        ref(xb).backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad, **F32)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **F32)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, **F32)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), **F32)


def test_a_one_rank_group_is_batchnorm_where_torch_refuses_the_cpu():
    ours, plain = normtut.SyncBatchNorm(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 2, 2)
    path = os.path.join(tempfile.mkdtemp(), "store")
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    try:
        torch.testing.assert_close(ours(x), plain(x), **F32)
        torch.testing.assert_close(ours.running_var, plain.running_var, **F32)
        with pytest.raises(ValueError, match="expected input tensor to be on GPU"):
            nn.SyncBatchNorm(3)(x)
    finally:
        dist.destroy_process_group()


def test_errors_are_torchs():
    for bad, exc in [(torch.randn(4), ValueError), (torch.randn(4, 0, 3), ValueError),
                     (torch.randn(1, 3), ValueError)]:  # fmt: skip
        for cls in (normtut.SyncBatchNorm, nn.SyncBatchNorm):
            with pytest.raises(exc):
                cls(3)(bad)
    for cls in (normtut.SyncBatchNorm, nn.SyncBatchNorm):
        layer = cls(3, track_running_stats=False)
        layer.track_running_stats = True  # buffers never registered: torch asserts
        with pytest.raises(AssertionError):
            layer(torch.randn(4, 3))
    with pytest.raises(TypeError):
        normtut.SyncBatchNorm(3, process_group=None, bias=False, foo=1)
    assert copy.deepcopy(normtut.SyncBatchNorm(3)).process_group is None
