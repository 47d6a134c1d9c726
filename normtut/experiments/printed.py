"""Comparing our outputs with tensors the seeds printed to a few decimals.

A seed prints a random input rounded to 4 decimals and the layer's output rounded to 4
decimals. Rebuilding the input from those digits changes every value by up to half a unit
of the last decimal, so a recomputed output may differ from the printed one in its last
digit. ``rounding_reach`` says how far each output can move for that reason (to first
order), so that a difference can be called explained, or not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def rounding_reach(fn: Callable[[Tensor], Tensor], x: Tensor, decimals: int = 4) -> Tensor:
    """Largest first-order move of each output of ``fn`` from rounding, shaped like ``fn(x)``.

    Every input may be off by h = 0.5e-``decimals`` (it was printed rounded), which moves
    output i by at most h * sum_j |d out_i / d x_j|; the printed output adds h of its own.
    """
    h = 0.5 * 10.0**-decimals
    x64 = x.detach().double()
    out = fn(x64)
    jac = torch.autograd.functional.jacobian(fn, x64).reshape(out.numel(), x64.numel())
    return (h * jac.abs().sum(dim=1) + h).reshape(out.shape)


def compare_printed(
    computed: Tensor, printed: Tensor, reach: Tensor | None = None, decimals: int = 4
) -> dict[str, float | int | bool]:
    """How ``computed`` compares with a ``printed`` tensor, digit by digit.

    Returns ``differ`` (values whose rounding to ``decimals`` differs from the print),
    ``total``, ``max_diff`` (largest |computed - printed|) and, given ``reach`` (from
    ``rounding_reach``), ``explained``: whether every difference lies within reach.
    """
    computed = computed.detach().double()
    printed = printed.double()
    diff = (computed - printed).abs()
    # Both sides rounded in float64: a float32 0.1234 is not exactly the double 0.1234.
    digits = computed.round(decimals=decimals) != printed.round(decimals=decimals)
    result: dict[str, float | int | bool] = {
        "differ": int(digits.sum()),
        "total": printed.numel(),
        "max_diff": round(diff.max().item(), decimals + 1),
    }
    if reach is not None:
        result["explained"] = bool((diff <= reach).all())
    return result
