"""torch.export.export, torch.jit.trace and torch.compile on every normtut layer: torch's numbers.

(torch.jit.script and torch.fx.symbolic_trace are not goals: normtut's layers are plain Python
with data-dependent checks.)
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import normtut

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (build the layer from a namespace, normtut or torch.nn; input shape)
LAYERS = {
    "BatchNorm1d": (lambda m: m.BatchNorm1d(4), (3, 4, 5)),
    "BatchNorm2d": (lambda m: m.BatchNorm2d(4), (3, 4, 5, 5)),
    "BatchNorm3d": (lambda m: m.BatchNorm3d(4), (2, 4, 3, 3, 3)),
    "InstanceNorm1d": (lambda m: m.InstanceNorm1d(4, affine=True), (3, 4, 5)),
    "InstanceNorm2d": (lambda m: m.InstanceNorm2d(4, track_running_stats=True), (3, 4, 5, 5)),
    "InstanceNorm3d": (lambda m: m.InstanceNorm3d(4), (2, 4, 3, 3, 3)),
    "LayerNorm": (lambda m: m.LayerNorm([5, 5]), (3, 4, 5, 5)),
    "GroupNorm": (lambda m: m.GroupNorm(2, 4), (3, 4, 5, 5)),
    "RMSNorm": (lambda m: m.RMSNorm(5), (3, 4, 5)),
    "LocalResponseNorm": (lambda m: m.LocalResponseNorm(3), (3, 4, 5, 5)),
    "SwitchableNorm2d": (lambda m: normtut.SwitchableNorm2d(4), (3, 4, 5, 5)),
    "SwitchableNorm2d_one_hot": (
        lambda m: normtut.SwitchableNorm2d(4).use_only_("in"),
        (3, 4, 5, 5),
    ),
    "SwitchableNorm1d": (lambda m: normtut.SwitchableNorm1d(4), (6, 4)),
    "FrozenBatchNorm2d": (lambda m: normtut.FrozenBatchNorm2d(4), (3, 4, 5, 5)),
}


def _pair(name: str, training: bool = True) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(normtut layer, reference, input): the reference is torch's twin, or a second copy of the
    normtut layer where torch has none (then the check is that compiling changes nothing)."""
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    ours = make(normtut)
    twin = make(nn) if hasattr(nn, type(ours).__name__) else make(normtut)
    twin.load_state_dict(ours.state_dict())
    if hasattr(ours, "only"):
        twin.only = ours.only
    ours.train(training)
    twin.train(training)
    return ours, twin, torch.randn(shape) * 2 + 1


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # deprecated in 2.13, still a goal here
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", LAYERS)
def test_jit_trace(name, training):
    ours, ref, x = _pair(name, training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # Python checks are constants
        traced = torch.jit.trace(ours, (x,), check_trace=False)
    _close(traced(x * 0.5), ref(x * 0.5))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", LAYERS)
def test_export(name, training):
    ours, ref, x = _pair(name, training)
    exported = torch.export.export(ours, (x,))
    _close(exported.module()(x * 0.5), ref(x * 0.5))


COMPILED = ["BatchNorm2d", "LayerNorm", "RMSNorm", "SwitchableNorm2d_one_hot"]


@pytest.mark.parametrize("name", COMPILED)
def test_compile(name):
    """A few layers only: each compilation costs seconds. The output and the input gradient."""
    torch._dynamo.reset()
    ours, ref, x = _pair(name)
    compiled = torch.compile(ours, backend="inductor")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = compiled(xa), ref(xb)
    _close(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    _close(xa.grad, xb.grad)
    torch._dynamo.reset()
