"""What the ranks of the SyncBatchNorm tests run, and the data they share with the reference.

Spawned processes import this module by name (``tests/`` is on the parent's ``sys.path``,
which spawn passes on). Every batch is drawn from a seeded generator, so the ranks and the
single-process reference in the test draw the very same numbers.
"""

from __future__ import annotations

import multiprocessing.util
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

import normtut


@dataclass(frozen=True)
class Case:
    """A whole batch of ``shape`` split over the ranks, ``split[r]`` samples to rank r."""

    name: str
    shape: tuple[int, ...]  # (N, C, *spatial) of the whole batch
    split: tuple[int, ...]  # samples per rank, summing to N
    momentum: float | None = 0.1
    affine: bool = True
    bias: bool = True
    track_running_stats: bool = True  # False: eval normalizes each rank's own slice
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    steps: int = 5


def data(case: Case) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """``steps`` pairs (x, dy) of the whole batch, then an input for eval; means far from 0."""
    gen = torch.Generator().manual_seed(sum(map(ord, case.name)))
    C = case.shape[1]
    scale = (1 + torch.rand(C, generator=gen)).reshape((1, C) + (1,) * (len(case.shape) - 2))

    def x() -> Tensor:
        t = (torch.randn(case.shape, generator=gen) * scale + 3).to(case.dtype)
        if case.channels_last:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    pairs = [
        (x(), torch.randn(case.shape, generator=gen).to(case.dtype)) for _ in range(case.steps)
    ]
    return pairs, x()


def part(t: Tensor, split: tuple[int, ...], rank: int) -> Tensor:
    """Rank ``rank``'s slice of the whole batch ``t`` (a view: layouts are kept)."""
    start = sum(split[:rank])
    return t[start : start + split[rank]]


def affine_values(case: Case) -> tuple[Tensor, Tensor]:
    """weight and bias the layers start from (not 1 and 0, so that mistakes show)."""
    gen = torch.Generator().manual_seed(1)
    C = case.shape[1]
    weight = torch.rand(C, generator=gen) + 0.5
    return weight, torch.randn(C, generator=gen)


def layer_steps(layer: nn.Module, case: Case, rank: int = 0, split=None, eval_split=None) -> dict:
    """Train ``layer`` on its slices for ``case.steps`` steps, then evaluate; record everything.

    With ``split=None`` the layer sees the whole batch (the single-process reference);
    ``eval_split`` (default ``split``) says which slice it sees in eval.
    """
    if case.affine:
        weight, bias = affine_values(case)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if layer.bias is not None:
                layer.bias.copy_(bias)
    take = (lambda t: t) if split is None else (lambda t: part(t, split, rank))
    pairs, x_eval = data(case)
    record: dict = {"steps": []}
    for x, dy in pairs:
        xr = take(x).detach().requires_grad_()
        try:
            y = layer(xr)
        except Exception as e:  # the same exception type on every rank, or the test fails
            record["error"] = type(e).__name__
            return record
        y.backward(take(dy))
        step = {
            "y": y.detach(),
            "y_stride": y.stride(),
            "dx": xr.grad,
            "dx_stride": xr.grad.stride(),
            "running_mean": _copy(layer.running_mean),
            "running_var": _copy(layer.running_var),
            "num_batches_tracked": _copy(layer.num_batches_tracked),
        }
        for name in ("weight", "bias"):
            p = getattr(layer, name)
            step[f"d{name}"] = None if p is None else p.grad.clone()
            if p is not None:
                p.grad = None
        record["steps"].append(step)
    layer.eval()
    if eval_split is not None:
        take = lambda t: part(t, eval_split, rank)  # noqa: E731
    with torch.no_grad():
        record["eval"] = layer(take(x_eval))
    return record


def _copy(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clone()


def run_cases(cases: list[Case]) -> dict:
    """On each rank: a fresh normtut.SyncBatchNorm per case, fed this rank's slices."""
    rank = dist.get_rank()
    out = {}
    for case in cases:
        layer = normtut.SyncBatchNorm(
            case.shape[1], momentum=case.momentum, affine=case.affine, bias=case.bias,
            track_running_stats=case.track_running_stats, dtype=case.dtype,
        )  # fmt: skip
        out[case.name] = layer_steps(layer, case, rank, case.split)
    return out


def run_subgroup(case: Case, members: list[int]) -> dict:
    """SyncBatchNorm with ``process_group`` = the ranks ``members``; the others alone.

    Every rank calls ``new_group``, members or not (torch's rule).
    """
    group = dist.new_group(members)
    layer = normtut.SyncBatchNorm(case.shape[1], process_group=group, dtype=case.dtype)
    return layer_steps(layer, case, dist.get_rank(), case.split)


# ---------------------------------------------------------------------------
# A model under DistributedDataParallel.
# ---------------------------------------------------------------------------


def ddp_model() -> nn.Sequential:
    """A small convnet with torch's BatchNorm2d and normtut's BatchNorm1d (fixed weights)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6), normtut.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3),
    )  # fmt: skip


def ddp_batches(n: int, steps: int = 5) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(2)
    return [
        (torch.randn(n, 2, 4, 4, generator=gen) + 1, torch.randint(0, 3, (n,), generator=gen))
        for _ in range(steps)
    ]


def train(model: nn.Module, batches, split=None, rank: int = 0) -> list[float]:
    """5 SGD steps (lr 0.1, rho 0.9) on the mean cross-entropy of the whole batch.

    With ``split``, ``model`` is this rank's DDP model: its loss is the sum over its slice
    times world_size / N, so that DDP's average of the ranks' gradients is the gradient of
    the mean over the whole batch, whatever the split.
    """
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for x, target in batches:
        if split is None:
            loss = nn.functional.cross_entropy(model(x), target)
        else:
            xr, tr = part(x, split, rank), part(target, split, rank)
            total = nn.functional.cross_entropy(model(xr), tr, reduction="sum")
            loss = total * len(split) / len(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def run_ddp(split: tuple[int, ...]) -> dict[str, Tensor]:
    """This rank's model, converted to SyncBatchNorm and trained under DDP: its state_dict."""
    model = normtut.SyncBatchNorm.convert_sync_batchnorm(ddp_model())
    ddp = nn.parallel.DistributedDataParallel(model)
    train(ddp, ddp_batches(sum(split)), split, dist.get_rank())
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------
# PyTorch's own test: 100 steps at momentum 0.99 on slices of different sizes.
# ---------------------------------------------------------------------------


def running_value_input(rank: int) -> Tensor:
    """Rank r's batch: shape (2, 2, 2^(r+1)), channel means and spreads depending on r."""
    gen = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(2, 2, 2 ** (rank + 1), generator=gen)
    return x * torch.tensor([1.0, 3.0]).reshape(1, 2, 1) + torch.tensor(
        [rank, -2.0 * rank]
    ).reshape(1, 2, 1)


def run_running_value(iterations: int = 100) -> tuple[Tensor, Tensor]:
    """SyncBatchNorm(2, momentum=0.99) in DDP, the same batch ``iterations`` times."""
    model = nn.parallel.DistributedDataParallel(normtut.SyncBatchNorm(2, momentum=0.99))
    x = running_value_input(dist.get_rank())
    for _ in range(iterations):
        model(x).mean().backward()
    return model.module.running_mean.clone(), model.module.running_var.clone()


def run_all(cases: list[Case], ddp_split: tuple[int, ...], subgroup=None) -> dict:
    """Everything one launch of the test file checks, so that processes start only once."""
    return {
        "cases": run_cases(cases),
        "subgroup": None if subgroup is None else run_subgroup(*subgroup),
        "ddp": run_ddp(ddp_split),
        "running_value": run_running_value(),
        "rank": dist.get_rank(),
    }


# ---------------------------------------------------------------------------
# Workers that misbehave, for the launcher's tests.
# ---------------------------------------------------------------------------


def raise_on_rank_0() -> None:
    """Rank 0 fails; the others wait in a collective that rank 0 never joins."""
    if dist.get_rank() == 0:
        raise ValueError("rank 0 gives up")
    dist.all_reduce(torch.zeros(1))


def raise_on_rank_0_then_linger() -> None:
    """As ``raise_on_rank_0``, but rank 0's process takes 3 s to exit after its error: rank 1,
    whose all_reduce fails once rank 0 leaves the group, ends first."""
    if dist.get_rank() == 0:
        multiprocessing.util.Finalize(None, time.sleep, args=(3.0,), exitpriority=0)
        raise ValueError("rank 0 gives up")
    dist.all_reduce(torch.zeros(1))


def hang_on_rank_1() -> int:
    """Rank 1 never returns; the others finish."""
    if dist.get_rank() == 1:
        time.sleep(3600)
    return dist.get_rank()
