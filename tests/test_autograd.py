"""normtut.autograd: the hand-derived backward of every layer, against torch (2.13).

First and second derivatives (gradcheck, gradgradcheck and torch's own double backward),
forward mode, torch.func, the bytes autograd keeps for backward, the aten ops that run,
and the split of the backward into grad_sums and grad_input that a distributed BatchNorm
relies on.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

import normtut
from normtut import autograd as A

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

F64 = {"rtol": 1e-9, "atol": 1e-9}


@dataclass(frozen=True)
class Layer:
    """A layer to check: how to build it from torch.nn or normtut, and an input shape."""

    name: str
    make: object  # make(library) -> module
    shape: tuple[int, ...]
    has_eval: bool = True  # eval mode uses running statistics

    def __repr__(self) -> str:
        return self.name


LAYERS = [
    Layer("BN1d-(N,C)", lambda L: L.BatchNorm1d(3), (5, 3)),
    Layer("BN1d-(N,C,L)", lambda L: L.BatchNorm1d(3), (2, 3, 4)),
    Layer("BN1d-no-bias", lambda L: L.BatchNorm1d(3, bias=False), (2, 3, 4)),
    Layer("BN2d", lambda L: L.BatchNorm2d(3), (2, 3, 2, 3)),
    Layer("BN2d-no-affine", lambda L: L.BatchNorm2d(3, affine=False), (2, 3, 2, 3)),
    Layer("BN2d-untracked", lambda L: L.BatchNorm2d(3, track_running_stats=False), (2, 3, 3, 2)),
    Layer("BN3d", lambda L: L.BatchNorm3d(2), (2, 2, 2, 2, 2)),
    Layer("IN1d", lambda L: L.InstanceNorm1d(3), (2, 3, 5), has_eval=False),
    Layer("IN1d-affine-tracked", lambda L: L.InstanceNorm1d(3, affine=True, track_running_stats=True), (2, 3, 5)),
    Layer("IN2d-affine", lambda L: L.InstanceNorm2d(3, affine=True), (2, 3, 2, 3), has_eval=False),
    Layer("IN2d-tracked", lambda L: L.InstanceNorm2d(3, track_running_stats=True), (2, 3, 2, 3)),
    Layer("IN3d-affine-tracked", lambda L: L.InstanceNorm3d(2, affine=True, track_running_stats=True), (2, 2, 2, 2, 3)),
    Layer("IN2d-unbatched", lambda L: L.InstanceNorm2d(3, affine=True), (3, 2, 3), has_eval=False),
    Layer("LN-last", lambda L: L.LayerNorm(4), (2, 3, 4), has_eval=False),
    Layer("LN-(C,L)", lambda L: L.LayerNorm([3, 4]), (2, 3, 4), has_eval=False),
    Layer("LN-no-bias", lambda L: L.LayerNorm(4, bias=False), (3, 4), has_eval=False),
    Layer("LN-no-affine", lambda L: L.LayerNorm([2, 3], elementwise_affine=False), (2, 2, 3), has_eval=False),
    Layer("GN", lambda L: L.GroupNorm(2, 4), (2, 4, 3), has_eval=False),
    Layer("GN-2d", lambda L: L.GroupNorm(3, 6), (2, 6, 2, 2), has_eval=False),
    Layer("GN-no-affine", lambda L: L.GroupNorm(2, 4, affine=False), (3, 4, 2), has_eval=False),
]  # fmt: skip
MODES = [
    (layer, mode)
    for layer in LAYERS
    for mode in ("train", "eval")
    if mode == "train" or layer.has_eval
]
IDS = [f"{layer.name}-{mode}" for layer, mode in MODES]


def pair(
    layer: Layer, mode: str, dtype=torch.float64, seed: int = 0
) -> tuple[nn.Module, nn.Module]:
    """(ours, torch's) with the same random parameters and running statistics."""
    torch.manual_seed(seed)
    ours, ref = layer.make(normtut).to(dtype), layer.make(nn).to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
        for name, b in ref.named_buffers():
            if name == "running_mean":
                b.copy_(torch.randn_like(b))
            elif name == "running_var":
                b.copy_(torch.rand_like(b) + 0.5)
    ours.load_state_dict(ref.state_dict())
    return ours.train(mode == "train"), ref.train(mode == "train")


def inputs(layer: Layer, module: nn.Module, dtype=torch.float64, seed: int = 1) -> tuple:
    """(x, *parameters) as fresh leaves that require grad."""
    torch.manual_seed(seed)
    x = (torch.randn(layer.shape, dtype=dtype) * 2 + 1).requires_grad_()
    return (x, *(p.detach().clone().requires_grad_() for p in module.parameters()))


def as_function(module: nn.Module):
    """module(x) with its parameters passed in: f(x, *params)."""
    names = [n for n, _ in module.named_parameters()]

    def f(x, *params):
        return functional_call(module, dict(zip(names, params, strict=True)), (x,))

    return f


# ---------------------------------------------------------------------------
# First and second derivatives.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("layer", "mode"), MODES, ids=IDS)
def test_gradcheck_and_gradgradcheck(layer, mode):
    """Numerical checks in float64: backward, forward mode (jvp), batched (vmap) backward,
    and second derivatives through the backward itself."""
    ours, _ = pair(layer, mode)
    args = inputs(layer, ours)
    f = as_function(ours)
    assert torch.autograd.gradcheck(f, args, check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize(("layer", "mode"), MODES, ids=IDS)
def test_derivatives_match_torch(layer, mode):
    """dL/dx, dL/dparams and second derivatives (d/dx, d/ddy, d/dparams of <dL/dx, v>) equal
    torch's own, for a dense random dy."""
    results = []
    for module in pair(layer, mode):
        x, *params = inputs(layer, module)
        y = as_function(module)(x, *params)
        torch.manual_seed(2)
        dy = torch.randn_like(y).requires_grad_()
        v = torch.randn_like(x)
        first = torch.autograd.grad(y, [x, *params], dy, create_graph=True)
        second = torch.autograd.grad((first[0] * v).sum(), [x, dy, *params], allow_unused=True)
        results.append((y, *first, *second))
    for a, b in zip(*results, strict=True):
        assert (a is None) == (b is None)
        if b is not None:
            torch.testing.assert_close(a, b, **F64)


def test_create_graph_backward_recomputes_the_statistics():
    """With create_graph the backward takes mean and rstd from x again, differentiably:
    the second derivative through mean and 1/sigma is not lost (a detached one would be)."""
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    for lib in (normtut, nn):
        y = lib.BatchNorm1d(2).double()(x)
        (dx,) = torch.autograd.grad(y, x, torch.cos(y), create_graph=True)
        (ddx,) = torch.autograd.grad(dx.pow(2).sum(), x)
        if lib is normtut:
            ours = ddx
    torch.testing.assert_close(ours, ddx, **F64)


# ---------------------------------------------------------------------------
# torch.func.
# ---------------------------------------------------------------------------

FUNC_LAYERS = [
    layer for layer in LAYERS if not layer.name.startswith("BN") or "untracked" in layer.name
]


@pytest.mark.parametrize("layer", FUNC_LAYERS, ids=repr)
@pytest.mark.parametrize("transform", ["grad", "jacrev", "jacfwd", "hessian"])
def test_torch_func_transforms_match_torch(layer, transform):
    """grad, jacrev, jacfwd, hessian over the layer in training, as torch's; running
    statistics (InstanceNorm with track_running_stats) are updated as torch updates them."""
    fns = {
        "grad": lambda f: torch.func.grad(lambda x: f(x).pow(2).sum()),
        "jacrev": torch.func.jacrev,
        "jacfwd": torch.func.jacfwd,
        "hessian": lambda f: torch.func.hessian(lambda x: f(x).pow(3).sum()),
    }
    ours, ref = pair(layer, "train")
    x = inputs(layer, ours)[0].detach()
    out_ours, out_ref = fns[transform](ours)(x), fns[transform](ref)(x)
    torch.testing.assert_close(out_ours, out_ref, **F64)
    for a, b in zip(ours.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize(
    "layer", [layer for layer in LAYERS if not layer.name.startswith("BN")], ids=repr
)
def test_vmap_per_sample_gradients_match_torch(layer):
    """vmap(grad(...)) over the samples: per-sample gradients of the input and parameters."""
    results = []
    for module in pair(layer, "train"):
        if "tracked" in layer.name:  # torch refuses to update unbatched buffers under vmap
            module.eval()
        f = as_function(module)
        x, *params = inputs(layer, module)
        xs = torch.stack([x.detach(), x.detach() * 2 - 1])

        def loss(x, *params, f=f):
            return f(x, *params).pow(3).sum()

        grads = torch.func.vmap(torch.func.grad(loss, argnums=tuple(range(1 + len(params)))),
                                in_dims=(0, *[None] * len(params)))(xs, *params)  # fmt: skip
        results.append(grads)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, **F64)


STATEFUL = [layer for layer in LAYERS if list(layer.make(nn).state_dict())]


@pytest.mark.parametrize("layer", STATEFUL, ids=repr)
def test_vmap_over_stacked_parameters_matches_torch(layer):
    """An ensemble: the parameters of two models stacked and vmapped over, the input shared
    (torch.func.stack_module_state). In eval where there are running statistics."""
    results = []
    for lib in (normtut, nn):
        models = [
            pair(layer, "eval" if layer.has_eval else "train", seed=s)[lib is nn] for s in (0, 1)
        ]
        params, buffers = torch.func.stack_module_state(models)
        x = inputs(layer, models[0])[0].detach()

        def run(p, b, x, model=models[0]):
            return functional_call(model, (p, b), (x,))

        y = torch.func.vmap(run, in_dims=(0, 0, None))(params, buffers, x)
        results.append(y)
    torch.testing.assert_close(results[0], results[1], **F64)


def test_vmap_over_a_tracked_layer_in_training_raises_like_torch():
    """Batched statistics cannot go into unbatched running buffers: both raise RuntimeError."""
    layer = next(layer for layer in LAYERS if layer.name == "IN2d-tracked")
    for module in pair(layer, "train"):
        x = inputs(layer, module)[0].detach()
        with pytest.raises(RuntimeError):
            torch.func.vmap(module)(torch.stack([x, x]))


def test_batchnorm_with_running_statistics_under_grad_transform_raises_like_torch():
    """BatchNorm counts its batches in place (num_batches_tracked += 1), which a grad
    transform refuses for a tensor captured from outside: RuntimeError in both."""
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    for lib in (normtut, nn):
        layer = lib.BatchNorm1d(3).double()
        with pytest.raises(RuntimeError, match="captured"):
            torch.func.grad(lambda x, layer=layer: layer(x).pow(2).sum())(x)


# ---------------------------------------------------------------------------
# What autograd keeps, and which kernels run.
# ---------------------------------------------------------------------------


def saved_storages(module: nn.Module, x: torch.Tensor) -> dict[int, tuple[int, int]]:
    """The distinct storages autograd keeps for backward: data pointer -> (bytes, elements)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = (s.nbytes(), s.nbytes() // t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return storages


@pytest.mark.parametrize(("layer", "mode"), MODES, ids=IDS)
def test_saved_bytes_not_more_than_torch(layer, mode):
    """Autograd keeps the input and per-group statistics only: never more bytes than torch."""
    ours, ref = pair(layer, mode, dtype=torch.float32)
    x = torch.randn(layer.shape, requires_grad=True)
    ours_bytes, torch_bytes = (
        sum(b for b, _ in saved_storages(m, x).values()) for m in (ours, ref)
    )
    assert ours_bytes <= torch_bytes, (ours_bytes, torch_bytes)


@pytest.mark.parametrize("layer", LAYERS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_input_is_kept_as_it_is(layer, dtype):
    """A float16/bfloat16 input is kept itself (not a float32 copy: the math runs in float32
    inside the Function); nothing else input-sized is kept. (The statistics are kept in
    float32, where torch keeps LayerNorm's and InstanceNorm's in the input's dtype.)"""
    ours, _ = pair(layer, "train", dtype=torch.float32)
    x = torch.randn(layer.shape, dtype=dtype, requires_grad=True)
    storages = saved_storages(ours, x)
    assert storages.pop(x.untyped_storage().data_ptr())[0] == x.numel() * x.element_size()
    assert all(numel < x.numel() for _, numel in storages.values()), storages


LARGE = [  # groups of 512 values and more: the statistics' dot-product path (functional)
    Layer("LN-(C,H,W)", lambda L: L.LayerNorm([8, 16, 16]), (4, 8, 16, 16), has_eval=False),
    Layer("LN-last", lambda L: L.LayerNorm(1024), (3, 2, 1024), has_eval=False),
    Layer("IN2d", lambda L: L.InstanceNorm2d(3, affine=True), (2, 3, 32, 32), has_eval=False),
    Layer("GN", lambda L: L.GroupNorm(2, 8), (2, 8, 16, 16), has_eval=False),
    Layer("BN2d", lambda L: L.BatchNorm2d(4), (4, 4, 16, 16)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("layer", "mode"),
    [
        (layer, mode)
        for layer in LARGE
        for mode in ("train", "eval")
        if mode == "train" or layer.has_eval
    ],
    ids=lambda v: getattr(v, "name", v),
)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_large_groups_match_torch_with_a_new_output(layer, mode, grad):
    """Where nothing records, the forward writes y into its one temporary: y is still a new
    tensor (version 0, not the input's memory) with torch's values, gradients and buffers."""
    ours, ref = pair(layer, mode, dtype=torch.float32)
    x = (torch.randn(layer.shape) * 2 + 1).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y, y_ref = ours(x), ref(x)
    assert y._version == y_ref._version == 0
    assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for name, b in ref.named_buffers():
        torch.testing.assert_close(ours.get_buffer(name), b, rtol=1e-6, atol=1e-6)
    if grad:
        dy = torch.randn_like(y)
        got = torch.autograd.grad(y, [x, *ours.parameters()], dy)
        want = torch.autograd.grad(y_ref, [x, *ref.parameters()], dy)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


class AtenOps(TorchDispatchMode):
    """Records the name of every aten op that runs inside."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name().split(".")[0])  # aten::mul.Tensor -> aten::mul
        return func(*args, **(kwargs or {}))


FORBIDDEN = ("norm", "var", "std")  # batch_norm, native_layer_norm, var_mean, std, vector_norm, ...


@pytest.mark.parametrize(("layer", "mode"), MODES, ids=IDS)
def test_no_torch_norm_or_variance_kernel_runs(layer, mode):
    """At the dispatcher: forward, backward and double backward run elementwise ops,
    reductions and products only; no norm, variance or standard-deviation kernel."""
    ours, _ = pair(layer, mode)
    x, *params = inputs(layer, ours)
    with AtenOps() as ops:
        y = as_function(ours)(x, *params)
        dy = torch.randn_like(y).requires_grad_()
        first = torch.autograd.grad(y, [x, *params], dy, create_graph=True)
        torch.autograd.grad(sum(g.sum() for g in first), [x, dy, *params], allow_unused=True)
    assert {"aten::sum", "aten::mul"} <= ops.names  # the recorder saw the work
    bad = sorted(n for n in ops.names if any(word in n for word in FORBIDDEN))
    assert not bad, bad
    with AtenOps() as torch_ops:  # the same recorder sees torch's kernels
        pair(layer, mode)[1](x)
    assert any(word in n for n in torch_ops.names for word in FORBIDDEN)


# ---------------------------------------------------------------------------
# The two halves of the formula, as a distributed BatchNorm uses them.
# ---------------------------------------------------------------------------


def test_backward_split_over_processes():
    """A batch split in two "processes": moments merged (Chan et al.), grad_sums added, then
    grad_input on each half gives the whole batch's dL/dx, as torch computes it."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64) + 0.5
    dy = torch.randn(8, 3, 4, dtype=torch.float64)
    y = torch.nn.functional.batch_norm(x, None, None, w, None, training=True, eps=1e-5)
    (expected,) = torch.autograd.grad(y, x, dy)

    dims, shape = (0, 2), (1, 3, 1)
    halves, dys = x.detach().chunk(2), dy.chunk(2)
    n, mean, m2 = normtut.functional.merge_moments(
        *(normtut.functional.partial_moments(h, dims) for h in halves)
    )
    rstd = torch.rsqrt(m2 / n + 1e-5)
    sums = [A.grad_sums(d, h - mean, shape) for d, h in zip(dys, halves, strict=True)]
    sum_dy, sum_dy_xc = (sum(s[i] for s in sums) for i in (0, 1))  # the all-reduce
    sum_g, sum_g_xc = (A.group_sum(t, w.reshape(shape), shape) for t in (sum_dy, sum_dy_xc))
    dx = [
        A.grad_input(d, h - mean, rstd, w.reshape(shape), sum_g, sum_g_xc, n)
        for d, h in zip(dys, halves, strict=True)
    ]
    torch.testing.assert_close(torch.cat(dx), expected, **F64)


def test_eval_backward_is_a_fixed_scale():
    """In eval, dL/dx = weight * rstd * dy: no sums, no coupling between samples."""
    ours = normtut.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        ours.running_var.copy_(torch.tensor([0.5, 2.0, 4.0]))
        ours.weight.copy_(torch.tensor([1.0, -2.0, 3.0]))
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    dy = torch.randn_like(x)
    (dx,) = torch.autograd.grad(ours(x), x, dy)
    scale = ours.weight / torch.sqrt(ours.running_var + ours.eps)
    torch.testing.assert_close(dx, dy * scale.reshape(1, 3, 1, 1), **F64)


# ---------------------------------------------------------------------------
# Tracing and compiling the Function.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["BN2d", "LN-(C,L)"])
def test_torch_compile_matches_torch(name):
    """Under torch.compile (the Function without its jvp, which Dynamo cannot trace) the
    outputs, gradients and running statistics are torch's; the layer compiles in one graph."""
    layer = next(layer for layer in LAYERS if layer.name == name)
    ours, ref = pair(layer, "train", dtype=torch.float32)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    for step in range(2):
        x = torch.randn(layer.shape) * 3 + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = compiled(xa), ref(xb)
        dy = torch.randn_like(yb)
        ga = torch.autograd.grad(ya, [xa, *ours.parameters()], dy)
        gb = torch.autograd.grad(yb, [xb, *ref.parameters()], dy)
        for a, b in zip((ya, *ga, *ours.buffers()), (yb, *gb, *ref.buffers()), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_jit_trace_and_export_update_the_running_statistics():
    """torch.export sees the Function; torch.jit.trace records the forward's plain aten ops
    (a graph that saves and runs without Python). Both update the running buffers once per
    call, as the module does."""
    x = torch.randn(4, 3, 5)
    for build in (
        lambda m: torch.jit.trace(m, (x,), check_trace=False),
        lambda m: torch.export.export(m, (x,)).module(),
    ):
        ours, ref = normtut.BatchNorm1d(3), nn.BatchNorm1d(3)
        traced = build(ours)
        traced.load_state_dict(ref.state_dict())  # undo the update made while tracing
        torch.testing.assert_close(traced(x), ref(x))
        for a, b in zip(traced.buffers(), ref.buffers(), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "layer",
    [layer for layer in LAYERS if layer.name in ("BN2d", "LN-(C,L)", "GN", "IN2d-affine")],
    ids=repr,
)
def test_jit_traced_layer_saves_and_differentiates_like_torch(layer):
    ours, ref = pair(layer, "train", dtype=torch.float32)
    x = torch.randn(layer.shape)
    traced = torch.jit.trace(ours, (x,), check_trace=False)
    torch.jit.save(traced, io.BytesIO())  # no Python op in the graph
    traced.load_state_dict(ref.state_dict())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = traced(xa), ref(xb)
    dy = torch.randn_like(yb)
    ga = torch.autograd.grad(ya, [xa, *traced.parameters()], dy)
    gb = torch.autograd.grad(yb, [xb, *ref.parameters()], dy)
    for a, b in zip((ya, *ga), (yb, *gb), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
