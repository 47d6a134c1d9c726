"""normtut.layout and the memory layout (strides) of every layer's output and input
gradient, against torch (2.13): channels_last stays channels_last in BatchNorm and GroupNorm,
everything else comes back contiguous."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import normtut
from normtut import layout

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def strided(shape: list[int], perm: list[int], step_dim: int | None = None) -> torch.Tensor:
    """A tensor of ``shape`` whose memory order is ``perm`` (outermost first), optionally
    taking every second element along ``step_dim`` (not dense)."""
    big = list(shape)
    if step_dim is not None:
        big[step_dim] *= 2
    x = torch.randn([big[p] for p in perm]).permute([perm.index(i) for i in range(len(shape))])
    if step_dim is not None:
        x = x[(slice(None),) * step_dim + (slice(None, None, 2),)]
    return x


def random_inputs(count: int, ranks=(4, 5), seed: int = 0):
    rng = random.Random(seed)
    for _ in range(count):
        rank = rng.choice(ranks)
        shape = [rng.choice([1, 1, 2, 3]) for _ in range(rank)]
        shape[1] = rng.choice([1, 2, 4])
        perm = list(range(rank))
        rng.shuffle(perm)
        step = rng.randrange(rank) if rng.random() < 0.3 else None
        yield strided(shape, perm, step)


def test_suggest_memory_format_is_what_group_norm_answers_in():
    """torch's group_norm answers in input.suggest_memory_format(): our port of the C++ rule
    (size-1 and size-0 axes, ties, slices, permutations included)."""
    checked = 0
    for x in random_inputs(1500, seed=1):
        if x[0].numel() < 2:
            continue
        expected = torch.empty_like(x, memory_format=layout.suggest_memory_format(x)).stride()
        assert nn.functional.group_norm(x, 1).stride() == expected, (x.shape, x.stride())
        checked += 1
    assert checked > 1000


def test_batch_norm_format_is_what_batch_norm_answers_in():
    """torch's CPU batch_norm keeps a dense input's own layout (contiguous first), else the
    suggested one."""
    checked = 0
    for x in random_inputs(1500, seed=2):
        if x.shape[0] * x[0, 0].numel() < 2:
            continue
        expected = torch.empty_like(x, memory_format=layout.batch_norm_format(x)).stride()
        y = nn.functional.batch_norm(x, None, None, training=True)
        assert y.stride() == expected, (x.shape, x.stride())
        checked += 1
    assert checked > 1000


def test_like_copies_only_when_the_strides_differ():
    x = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    t = torch.randn(2, 3, 4, 5)
    moved = layout.like(t, x)
    assert moved.stride() == x.stride() and torch.equal(moved, t)
    same = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    assert layout.like(same, x) is same


LAYERS = {
    "BN1d": (lambda L: L.BatchNorm1d(4), (3, 4, 5)),
    "BN2d": (lambda L: L.BatchNorm2d(4), (3, 4, 5, 6)),
    "BN3d": (lambda L: L.BatchNorm3d(4), (3, 4, 2, 3, 5)),
    "IN1d": (lambda L: L.InstanceNorm1d(4, affine=True), (3, 4, 5)),
    "IN2d": (lambda L: L.InstanceNorm2d(4, affine=True, track_running_stats=True), (3, 4, 5, 6)),
    "IN3d": (lambda L: L.InstanceNorm3d(4), (3, 4, 2, 3, 5)),
    "LN(C,H,W)": (lambda L: L.LayerNorm([4, 5, 6]), (3, 4, 5, 6)),
    "LN-last": (lambda L: L.LayerNorm(6), (3, 4, 5, 6)),
    "GN": (lambda L: L.GroupNorm(2, 4), (3, 4, 5, 6)),
    "GN-3d": (lambda L: L.GroupNorm(2, 4), (3, 4, 2, 3, 5)),
}


def layouts(shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    rank = len(shape)
    cases = {
        "contiguous": torch.randn(shape),
        "batch-transposed": strided(list(shape), [1, 0, *range(2, rank)]),
        "last-two-swapped": strided(list(shape), [*range(rank - 2), rank - 1, rank - 2]),
        "sliced": strided(list(shape), list(range(rank)), step_dim=rank - 1),
    }
    if rank == 4:
        cases["channels_last"] = torch.randn(shape).to(memory_format=torch.channels_last)
    if rank == 5:
        cases["channels_last_3d"] = torch.randn(shape).to(memory_format=torch.channels_last_3d)
    return cases


CASES = [
    (name, mode, how)
    for name, (_, shape) in LAYERS.items()
    for mode in ("train", "eval")
    for how in layouts(shape)
]


@pytest.mark.parametrize(("name", "mode", "how"), CASES, ids=["-".join(c) for c in CASES])
def test_output_and_input_gradient_strides_match_torch(name, mode, how):
    """The output has torch's strides (so ``.view`` works where torch's does), and so has the
    input gradient, whatever the layout of dy."""
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    x = layouts(shape)[how]
    results = []
    for lib in (normtut, nn):
        layer = make(lib).train(mode == "train")
        xs = x.detach().requires_grad_()
        y = layer(xs)
        strides = [y.stride()]
        for dy in (torch.randn(y.shape), torch.randn_like(x), torch.randn_like(y)):
            (dx,) = torch.autograd.grad(y, xs, dy, retain_graph=True)
            strides.append(dx.stride())
        results.append((y, strides))
    (ya, sa), (yb, sb) = results
    assert sa == sb
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
