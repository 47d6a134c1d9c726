"""benchmarks/run.py: what its memory column counts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

import normtut

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
run = importlib.util.module_from_spec(spec)
sys.modules["bench_run"] = run  # (its dataclasses look their module up)
spec.loader.exec_module(run)


def test_peak_counts_new_storages_while_they_live():
    x = torch.randn(1000)
    nbytes = x.numel() * 4

    def two_at_once():
        a = x * 2
        b = a + 1  # a and b alive together
        del a, b
        c = x * 3  # alone: the peak stays at two
        del c

    assert run.peak_bytes(two_at_once, [x]) == 2 * nbytes


def test_peak_does_not_count_views_of_existing_tensors():
    """A view of the input (GroupNorm's reshape) is not new memory."""
    x = torch.randn(4, 6, 5)

    def view_then_copy():
        v = x.reshape(4, 3, 2, 5)
        return v * 1

    assert run.peak_bytes(view_then_copy, [x]) == x.numel() * 4
    assert run.peak_bytes(view_then_copy) == 2 * x.numel() * 4  # x counted when not named


def test_groupnorm_peak_matches_batchnorm_peak():
    """Same forward and backward steps, so the same temporaries, whatever the grouping view."""
    x = torch.randn(8, 16, 8, 8, requires_grad=True)
    dy = torch.randn_like(x)
    peaks = {}
    for name, layer in {"bn": normtut.BatchNorm2d(16), "gn": normtut.GroupNorm(4, 16)}.items():
        params = list(layer.parameters())
        step = lambda layer=layer, params=params: torch.autograd.grad(layer(x), [x, *params], dy)  # noqa: E731
        peaks[name] = run.peak_bytes(step, [x, dy, *params]) / (x.numel() * 4)
    assert round(peaks["gn"]) == round(peaks["bn"]) == 2
