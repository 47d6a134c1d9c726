"""Helpers shared by the layer tests: build a layer and torch's twin, run both, compare everything.

Imported as ``from twins import ...``: pytest puts this folder on sys.path (rootdir-less test
files, the default "prepend" import mode), from the repository root and from inside tests/.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from torch import nn

F32 = {"rtol": 1e-4, "atol": 1e-5}  # float32 results against torch's
F64 = {"rtol": 1e-9, "atol": 1e-10}  # float64 results against torch's


def params(fn: Callable) -> list[tuple[str, object, object]]:
    """A signature as (name, kind, default), annotations aside."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def randomize(*modules: nn.Module) -> None:
    """The same random affine (weight in [0.5, 1.5), bias ~ N(0, 1)) in every module.

    Drawn for the first module's parameters; the others take the same numbers by name, in their own shape.
    """
    with torch.no_grad():
        for name, p in modules[0].named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if name == "weight" else torch.randn_like(p))
            for m in modules[1:]:
                getattr(m, name).copy_(p.reshape(getattr(m, name).shape))


def twins(
    classes: tuple[type[nn.Module], type[nn.Module]], *args, **kwargs
) -> tuple[nn.Module, nn.Module]:
    """(ours, torch's) from ``classes`` = (torch's class, our class), built with the same arguments.

    Both must have the same parameter names and shapes; they get the same random affine.
    """
    ref, ours = classes[0](*args, **kwargs), classes[1](*args, **kwargs)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in ref.named_parameters()
    ]
    randomize(ref, ours)
    return ours, ref


def assert_same_state(ours: nn.Module, ref: nn.Module, equal_nan: bool = False, **tol) -> None:
    """The same state_dict: keys in order, dtypes, shapes and values (NaN equal to NaN if ``equal_nan``)."""
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        torch.testing.assert_close(a[k], b[k], equal_nan=equal_nan, **tol)


def forward_backward(
    ours: nn.Module, ref: nn.Module, x: torch.Tensor, match_errors: bool = False, **tol
) -> bool:
    """Forward and backward (one random output gradient) on copies of ``x``: outputs and input gradients match.

    With ``match_errors``, if torch raises, ours must raise the same exception type; then nothing
    else is compared and the result is False. Otherwise the result is True.
    """
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    try:
        yb = ref(xb)
    except Exception as e:
        if not match_errors:
            raise
        with pytest.raises(type(e)):
            ours(xa)
        return False
    ya = ours(xa)
    assert ya.dtype == yb.dtype and ya.shape == yb.shape
    torch.testing.assert_close(ya, yb, **tol)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    return True


def forward_backward_shapes(ours: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    """Forward and ``sum().backward()`` on copies of ``x``: the output and input-gradient shapes match.

    For the known differences on empty inputs, where the caller checks the rest itself.
    """
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert ya.shape == yb.shape == x.shape
    ya.sum().backward()
    yb.sum().backward()
    assert xa.grad.shape == xb.grad.shape


def step(
    ours: nn.Module,
    ref: nn.Module,
    x: torch.Tensor,
    state: Callable[..., None] | None = None,
    reset_grads: bool = False,
    match_errors: bool = False,
    **tol,
) -> None:
    """One forward/backward on both: outputs, input and parameter gradients (by name), then ``state(ours, ref, **tol)``.

    ``reset_grads`` sets the parameter gradients back to None once compared; ``match_errors`` is
    passed to :func:`forward_backward` (the state is still compared after a matching error).
    """
    if forward_backward(ours, ref, x, match_errors=match_errors, **tol):
        for (na, pa), (nb, pb) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
            assert na == nb
            torch.testing.assert_close(pa.grad, pb.grad, **tol)
            if reset_grads:
                pa.grad, pb.grad = None, None
    if state is not None:
        state(ours, ref, **tol)


def gradcheck_inputs(
    x_shape: tuple[int, ...], affine_shape: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """Float64 leaves for gradcheck: x ~ N(0, 1), a weight in [0, 1), a bias ~ N(0, 1)."""
    x = torch.randn(*x_shape, dtype=torch.float64, requires_grad=True)
    w = torch.rand(*affine_shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(*affine_shape, dtype=torch.float64, requires_grad=True)
    return x, w, b


def same_error(ours: Callable, theirs: Callable, exc: type[Exception], match: str = ".") -> None:
    """Ours and torch's raise ``exc``; ours with a message (matching ``match``)."""
    with pytest.raises(exc, match=match):
        ours()
    with pytest.raises(exc):
        theirs()


def check_low_precision(
    ours: nn.Module, ref: nn.Module, ref32: nn.Module, dtype: torch.dtype, backward: bool = True
) -> dict[str, float]:
    """ours and torch's on a (3, 4, 5, 6) float16/bfloat16 batch, against torch's float32 layer ``ref32``.

    ``ref32`` is loaded with ref's state first. The output is the float32 result rounded once,
    and within twice that of torch's own low-precision output. With ``backward``, the input
    gradient also rounds the float32 one, and the weight gradient is within four times of it.
    Returns the tolerances used.
    """
    ref32.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(3, 4, 5, 6).mul(3).add(2).to(dtype)
    tol = {"rtol": 2e-3, "atol": 2e-3} if dtype == torch.float16 else {"rtol": 1.6e-2, "atol": 1e-2}
    xa, xb, x32 = (t.requires_grad_(backward) for t in (x.clone(), x.clone(), x.float()))
    ya, yb, y32 = ours(xa), ref(xb), ref32(x32)
    assert ya.dtype == yb.dtype == dtype
    torch.testing.assert_close(ya, y32.to(dtype), **tol)  # the float32 math, rounded once
    torch.testing.assert_close(ya, yb, rtol=2 * tol["rtol"], atol=2 * tol["atol"])
    if backward:
        g = torch.randn(x.shape)
        ya.backward(g.to(dtype))
        yb.backward(g.to(dtype))
        y32.backward(g.to(dtype).float())
        assert xa.grad.dtype == dtype and ours.weight.grad.dtype == ref.weight.grad.dtype
        torch.testing.assert_close(xa.grad, x32.grad.to(dtype), **tol)
        rtol, atol = 4 * tol["rtol"], 4 * tol["atol"]
        torch.testing.assert_close(
            ours.weight.grad.float(), ref32.weight.grad, rtol=rtol, atol=atol
        )
    return tol


def check_large_offset(ours: Callable, theirs: Callable, *args) -> None:
    """x = 1000 + 0.01 z in float32 (|mean| / std = 1e5: E[x^2] - E[x]^2 fails): ``ours(x, *args)`` is
    within 0.02 of torch's float64 result, and not much worse than ``theirs(x, *args)`` in float32."""
    x = torch.randn(4, 6, 64) * 0.01 + 1000
    exact = theirs(x.double(), *args)
    y_ours, y_theirs = ours(x, *args), theirs(x, *args)
    err_ours, err_torch = (y_ours - exact).abs().max().item(), (y_theirs - exact).abs().max().item()
    assert err_ours < 0.02 and err_ours < 3 * err_torch + 1e-3, (err_ours, err_torch)
