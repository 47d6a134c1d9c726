"""Small batches: BatchNorm's test error climbs as the batch shrinks, GroupNorm's does not.

The Group Normalization paper (Wu & He, ECCV 2018, Figure 1) shows it for ResNet-50 on
ImageNet; here it is seed 002's LeNet on scikit-learn's 8x8 digits (``digits.load_digits``,
357 test images), small enough for a laptop CPU. As in the paper, every batch size trains
for the same number of epochs with a learning rate scaled linearly with the batch size,
lr = base_lr * B / 32 (then annealed along a cosine to 0), and the test error is measured
in eval mode, i.e. with BatchNorm's running statistics.

Every (norm, batch size, seed) cell is deterministic (see ``digits``), so cells can run in
parallel worker processes (``jobs``) and still give the results of a serial run, bit for bit.

With ``ranks`` > 1 each cell is trained as in the paper, by several processes under
DistributedDataParallel, each on B images of a global batch of ranks * B; BatchNorm then
normalizes each process's B images, or, with ``sync``, all of them together (SyncBatchNorm).
The processes are started here (``distributed.launch``) or by ``torchrun``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import itertools
import os
import statistics
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from .. import functional as F
from ..batchnorm import _BatchNorm
from ..syncbatchnorm import SyncBatchNorm
from . import digits, distributed, parallel
from .digits import Digits
from .models import NORMS, LeNet

BATCHNORMS = (_BatchNorm, nn.modules.batchnorm._BatchNorm)  # normtut's and torch's
NORM_NAMES = tuple(NORMS)  # none, bn, gn, ln, in, sn
BATCH_SIZES = (2, 4, 8, 16, 32)
SEEDS = (0, 1, 2)
EPOCHS = 5
BASE_LR = 0.05  # at batch size 32

COLORS = {"none": "grey", "bn": "C0", "gn": "C1", "ln": "C2", "in": "C3", "sn": "C4"}

# Wu & He (2018), Figure 1 and Table 3: ResNet-50 on ImageNet, validation error (%) by
# images per GPU.
PAPER_ERROR = {
    "bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}


@dataclass
class Result:
    """One trained model's test error (%, eval mode).

    ``batch_size`` is per process when ``ranks`` > 1; ``sync``: BatchNorm synchronized
    across them. ``model`` is kept for inspection, not written out.
    """

    norm: str
    batch_size: int
    seed: int
    test_error: float
    ranks: int = 1
    sync: bool = False
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """The norm, with the number of processes and whether BatchNorm was synchronized."""
        if self.ranks == 1:
            return self.norm
        return f"{self.norm}, {self.ranks} ranks" + (", sync" if self.sync else "")


def set_momentum(model: nn.Module, momentum: float | None) -> None:
    """Set ``momentum`` of every layer with running statistics.

    None (a cumulative average) is allowed for BatchNorm layers only.
    """
    for m in model.modules():
        if getattr(m, "running_mean", None) is None:
            continue
        if momentum is None and not isinstance(m, BATCHNORMS):
            raise ValueError(
                "momentum=None (a cumulative average) is BatchNorm's; "
                f"{type(m).__name__} needs a number"
            )
        m.momentum = momentum


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, batch_stats: Collection[str] = (), batch_size: int = 2
) -> float:
    """Error in percent. By default in eval mode: every norm layer on its running statistics.

    ``batch_stats`` names norm layers (e.g. LeNet's '1', '5', '10', '13') that use the
    statistics of the test batch instead, as in training: the input is then fed in batches
    of ``batch_size`` (a smaller last batch is dropped). The model itself is not changed.
    """
    if not batch_stats:
        return digits.error(model, x, y)
    model = copy.deepcopy(model).eval()  # train mode would update the running statistics
    modules = dict(model.named_modules())
    for name in batch_stats:
        modules[name].train()  # this layer normalizes with the statistics of its batch
    keep = len(y) - len(y) % batch_size
    if keep == 0:
        raise ValueError(
            f"nothing to evaluate: {len(y)} samples make no batch of batch_size={batch_size}"
        )
    logits = torch.cat([model(xb) for xb in x[:keep].split(batch_size)])
    return digits.percent_wrong(logits, y[:keep])


def _with_batch_stats(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose norm layers normalize with batch statistics, as in training."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            m.train()
    return model


@torch.no_grad()
def normalized(model: nn.Module, x: Tensor, name: str, batch_size: int | None = None) -> Tensor:
    """x_hat at BatchNorm layer ``name`` for inputs ``x``: its normalized input, before the affine.

    ``batch_size=None``: eval mode, the running statistics (as at test time). Otherwise every
    norm layer uses the statistics of batches of ``batch_size`` (as in training; a smaller
    last batch is dropped). The model is not changed.
    """
    model = copy.deepcopy(model).eval() if batch_size is None else _with_batch_stats(model)
    layer = dict(model.named_modules())[name]
    inputs: list[Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, output: inputs.append(args[0]))
    if batch_size is None:
        model(x)
        handle.remove()
        # (h - running_mean) / sqrt(running_var + eps)
        return F.batch_norm(inputs[0], layer.running_mean, layer.running_var, eps=layer.eps)
    keep = len(x) - len(x) % batch_size
    for xb in x[:keep].split(batch_size):
        model(xb)
    handle.remove()
    # Each batch normalized with its own statistics.
    return torch.cat([F.batch_norm(h, None, None, training=True, eps=layer.eps) for h in inputs])


@torch.no_grad()
def partner_predictions(model: nn.Module, x: Tensor, index: int) -> Tensor:
    """The class predicted for ``x[index]`` in a batch of two with each other sample.

    The norm layers use the pair's batch statistics. Returns one prediction per partner
    (len(x) - 1): in training at B = 2 what the network sees of an image depends on the
    image that shares its batch.
    """
    model = _with_batch_stats(model)
    partners = [j for j in range(len(x)) if j != index]
    return torch.stack([model(torch.stack([x[index], x[j]]))[0].argmax() for j in partners])


@torch.no_grad()
def recalibrate(model: nn.Module, x: Tensor, batch_size: int | None = None) -> nn.Module:
    """A copy of ``model`` with BatchNorm running statistics re-estimated on ``x`` ("precise BN").

    The buffers are reset, then every batch of ``batch_size`` (default: all of ``x`` at
    once) counts equally (momentum None, a cumulative average). Only BatchNorm layers change.
    """
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, BATCHNORMS):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    for xb in x.split(batch_size or len(x)):
        model(xb)
    return model.eval()


def train_model(
    norm: str,
    batch_size: int,
    seed: int,
    data: Digits,
    epochs: int = EPOCHS,
    base_lr: float = BASE_LR,
    momentum: float | None = 0.1,
    after_step: digits.AfterStep | None = None,
    sync: bool = False,
    **lenet_options,
) -> LeNet:
    """Train ``digits.lenet(norm, seed, **lenet_options)``; return it in eval mode.

    SGD with rho = 0.9 from lr = base_lr * B / 32, annealed to 0 along a cosine over all
    steps (the last epochs settle the weights, so the final error is not one noisy step's).
    ``momentum`` is the norm layers' running-statistics momentum (not the optimizer's).
    In one of R processes of a process group, the model trains in DistributedDataParallel
    on B = R * ``batch_size`` images a step, ``batch_size`` in each process; ``sync``
    turns its BatchNorm layers into SyncBatchNorm.
    """
    ranks = dist.get_world_size() if dist.is_initialized() else 1
    B = batch_size * ranks  # the global batch
    if batch_size < 2 or B > len(data.y_train):
        raise ValueError(f"batch_size must be between 2 and {len(data.y_train)}, got {B}")
    model = digits.lenet(norm, seed, **lenet_options)
    set_momentum(model, momentum)
    if sync:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    lr = base_lr * B / 32  # linear scaling rule, as in the GN paper
    trained = model if ranks == 1 else nn.parallel.DistributedDataParallel(model)
    rank = dist.get_rank() if ranks > 1 else 0
    digits.train(
        trained, data, epochs=epochs, batch_size=B, lr=lr, seed=seed, schedule="cosine",
        after_step=after_step, rank=rank, world_size=ranks,
    )  # fmt: skip
    return model.eval()


def run_cell(
    norm: str,
    batch_size: int,
    seed: int,
    data: Digits,
    epochs: int = EPOCHS,
    base_lr: float = BASE_LR,
    momentum: float | None = 0.1,
    precise_bn: bool = False,
    sync: bool = False,
    progress: parallel.Progress | None = None,
) -> Result:
    """Train and test one (norm, batch size, seed) cell of the experiment.

    ``precise_bn``: re-estimate the BatchNorm statistics on the whole training set before
    testing. ``progress(steps)`` is called after each epoch with its number of steps. In a
    process group every process calls it (see ``train_model``; ``sync``: SyncBatchNorm).
    """
    ranks = dist.get_world_size() if dist.is_initialized() else 1
    per_epoch = digits.steps_per_epoch(len(data.y_train), max(batch_size * ranks, 1))

    def after_step(step: int, loss: float) -> None:
        if progress is not None and step % per_epoch == 0:
            progress(per_epoch)

    with digits.one_thread():  # the test pass too: its sums must not depend on the machine
        model = train_model(
            norm, batch_size, seed, data, epochs, base_lr, momentum, after_step, sync
        )
        if precise_bn:
            model = recalibrate(model, data.x_train)
        error = evaluate(model, data.x_test, data.y_test)
        return Result(norm, batch_size, seed, error, ranks, sync, model)


def run_on_ranks(cells: Sequence[tuple]) -> list[Result]:
    """In each process of a group: ``run_cell(*cell)`` for every cell, one after another."""
    return [run_cell(*cell) for cell in cells]


def run(
    norms: Sequence[str] = ("bn", "gn"),
    batch_sizes: Sequence[int] = BATCH_SIZES,
    seeds: Sequence[int] = SEEDS,
    epochs: int = EPOCHS,
    base_lr: float = BASE_LR,
    momentum: float | None = 0.1,
    precise_bn: bool = False,
    progress: bool = False,
    data: Digits | None = None,
    jobs: int = 1,
    ranks: int = 1,
    sync: bool = False,
) -> list[Result]:
    """Train one model per (norm, batch size, seed); return their test errors (and the models).

    ``jobs`` worker processes share the cells (1: all in this process); the results are the
    same for every ``jobs``. ``progress`` shows one tqdm bar of training steps on stderr.
    ``ranks`` > 1: every cell is trained by ``ranks`` processes together, each on
    ``batch_size`` images a step (``sync``: SyncBatchNorm), started here or, inside a
    process group of that size (torchrun), by the caller; the results are rank 0's.
    """
    for norm in norms:
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid names: {', '.join(NORM_NAMES)}")
    for b in batch_sizes:
        if b < 2:
            raise ValueError(
                f"batch sizes must be at least 2 (BatchNorm needs two samples), got {b}"
            )
    data = digits.load_digits() if data is None else data
    settings = (data, epochs, base_lr, momentum, precise_bn, sync)
    cells = [(*cell, *settings) for cell in itertools.product(norms, batch_sizes, seeds)]
    if dist.is_initialized():  # one of ``ranks`` processes (torchrun): train together
        if dist.get_world_size() != ranks:
            raise ValueError(f"{ranks} ranks asked for in a group of {dist.get_world_size()}")
        return run_on_ranks(cells)
    if ranks > 1:  # start the processes here
        return distributed.launch(run_on_ranks, ranks, cells, timeout=24 * 3600)[0]
    if sync:
        raise ValueError("sync=True needs ranks > 1")
    steps = sum(digits.steps_per_epoch(len(data.y_train), b) for b in batch_sizes)
    total = len(norms) * len(seeds) * epochs * steps
    with tqdm(
        total=total, unit="step", file=sys.stderr, disable=not progress, dynamic_ncols=True
    ) as bar:
        return parallel.map_cells(run_cell, cells, jobs, bar.update, cost=lambda c: 1 / c[1])


def summarize(results: Sequence[Result]) -> dict[tuple[str, int], tuple[float, float]]:
    """(label, batch size) -> (mean, sample standard deviation) of the test error over seeds.

    The label is the norm itself for single-process runs (``Result.label``).
    """
    groups: dict[tuple[str, int], list[float]] = {}
    for r in results:
        groups.setdefault((r.label, r.batch_size), []).append(r.test_error)
    return {
        key: (statistics.mean(errors), statistics.stdev(errors) if len(errors) > 1 else 0.0)
        for key, errors in groups.items()
    }


def results_table(results: Sequence[Result]) -> str:
    """Test error (%) as a text table, mean ± sd over seeds.

    One row per norm, one column per batch size.
    """
    summary = summarize(results)
    norms = list(dict.fromkeys(r.label for r in results))
    sizes = sorted({r.batch_size for r in results})
    seeds = sorted({r.seed for r in results})
    with_sd = len(seeds) > 1
    width = 14 if with_sd else 7
    lines = [
        f"test error (%), mean{' ± sd' if with_sd else ''} over seeds {', '.join(map(str, seeds))}"
    ]
    first = max(5, *(len(n) + 1 for n in norms))  # the norm column
    lines.append(f"{'norm':<{first}}" + "".join(f"{'B=' + str(b):>{width}}" for b in sizes))
    for norm in norms:
        cells = []
        for b in sizes:
            if (norm, b) not in summary:
                cells.append(f"{'-':>{width}}")
                continue
            mean, sd = summary[norm, b]
            cell = f"{mean:.1f} ± {sd:.1f}" if with_sd else f"{mean:.1f}"
            cells.append(f"{cell:>{width}}")
        lines.append(f"{norm:<{first}}" + "".join(cells))
    return "\n".join(lines)


def write_csv(results: Sequence[Result], path: str | Path) -> None:
    """Write ``norm,batch_size,seed,test_error`` rows (test error in percent, eval mode).

    Runs on several processes add the columns ``ranks,sync``.
    """
    many = any(r.ranks > 1 for r in results)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["norm", "batch_size", "seed", "test_error"] + ["ranks", "sync"] * many)
        for r in results:
            row = [r.norm, r.batch_size, r.seed, f"{r.test_error:.4f}"]
            writer.writerow(row + [r.ranks, int(r.sync)] * many)


def read_csv(path: str | Path) -> list[Result]:
    """The results ``write_csv`` wrote (without models)."""
    with open(path, newline="") as f:
        return [
            Result(
                row["norm"],
                int(row["batch_size"]),
                int(row["seed"]),
                float(row["test_error"]),
                int(row.get("ranks", 1)),
                bool(int(row.get("sync", 0))),
            )  # fmt: skip
            for row in csv.DictReader(f)
        ]


def plot(results: Sequence[Result]):
    """Test error against batch size per norm, beside the GN paper's Figure 1.

    Our panel: the mean over seeds (line) and every seed (dots), on a log scale.
    """
    import matplotlib.pyplot as plt

    fig, (ours, paper) = plt.subplots(1, 2, figsize=(10, 3.8))
    summary = summarize(results)
    for norm in dict.fromkeys(r.norm for r in results):
        sizes = sorted(b for n, b in summary if n == norm)
        means = [summary[norm, b][0] for b in sizes]
        ours.plot(sizes, means, marker="o", color=COLORS[norm], label=norm)
        runs = [r for r in results if r.norm == norm]
        dots = [r.batch_size for r in runs], [r.test_error for r in runs]
        ours.scatter(*dots, color=COLORS[norm], alpha=0.35, s=14)
    for norm, errors in PAPER_ERROR.items():
        sizes = sorted(errors)
        paper.plot(sizes, [errors[b] for b in sizes], marker="o", color=COLORS[norm], label=norm)
    ours.set_yscale("log")
    low, high = ours.get_ylim()
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high]
    ours.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ours.set_ylabel("test error (%, log scale)")
    ours.set_title("LeNet, sklearn digits: mean (line), seeds (dots)")
    paper.set_ylabel("validation error (%)")
    paper.set_title("ResNet-50, ImageNet (Wu & He 2018)")
    for ax in (ours, paper):
        ax.set_xscale("log", base=2)
        ax.set_xticks(BATCH_SIZES, [str(b) for b in BATCH_SIZES])
        ax.invert_xaxis()  # the paper's orientation: the batch shrinks to the right
        ax.set_xlabel("batch size (images per GPU in the paper)")
        ax.legend()
    fig.tight_layout()
    return fig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m normtut.experiments small-batch``."""
    parser.add_argument(
        "--norms",
        nargs="+",
        default=["bn", "gn"],
        choices=NORM_NAMES,
        metavar="NORM",
        help=f"norms to compare, from: {' '.join(NORM_NAMES)} (default: bn gn)",
    )
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=list(BATCH_SIZES),
        metavar="B",
        help="batch sizes (default: 2 4 8 16 32)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=list(SEEDS),
        metavar="S",
        help="seeds for the initial weights and the shuffling (default: 0 1 2)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=EPOCHS,
        help=f"epochs for every batch size (default: {EPOCHS})",
    )
    parser.add_argument(
        "--base-lr",
        type=float,
        default=BASE_LR,
        help=f"SGD learning rate at batch size 32; lr = base_lr * B / 32 (default: {BASE_LR})",
    )
    parser.add_argument(
        "--momentum",
        type=float,
        default=0.1,
        help="running-statistics momentum of the norm layers (default: 0.1, PyTorch's)",
    )
    parser.add_argument(
        "--precise-bn",
        action="store_true",
        help="re-estimate BatchNorm's running statistics on the whole training set before testing",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help=f"worker processes (default: the number of cores, {parallel.cores()} here)",
    )
    ranks = parser.add_mutually_exclusive_group()
    ranks.add_argument(
        "--ranks",
        type=int,
        default=1,
        metavar="N",
        help="train each model with N processes (gloo, DistributedDataParallel), B images "
        "each: BatchNorm normalizes each process's B images (default: 1)",
    )
    ranks.add_argument(
        "--sync-ranks",
        type=int,
        default=None,
        metavar="N",
        help="the same with BatchNorm synchronized across the N processes (SyncBatchNorm). "
        "Under torchrun, N is its number of processes",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results to this CSV file")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it is also off when stderr is not a terminal)",
    )


def _check_ranks(ranks: int, sync: bool, jobs: int | None) -> None:
    """--ranks/--sync-ranks make sense here: a positive count, torchrun's if under torchrun."""
    option = "--sync-ranks" if sync else "--ranks"
    if ranks < 1 or (sync and ranks < 2):
        raise SystemExit(f"small-batch: {option} must be at least {2 if sync else 1}")
    if ranks > 1 and jobs is not None:
        raise SystemExit(f"small-batch: --jobs does not combine with {option}")
    if distributed.in_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if ranks != world:
            if os.environ["RANK"] != "0":  # rank 0 says why
                raise SystemExit(2)
            raise SystemExit(
                f"small-batch: started by torchrun as one of {world} processes: "
                f"add --sync-ranks {world} (or --ranks {world})"
            )


def main(args: argparse.Namespace) -> int:
    """Run the experiment from parsed arguments.

    Progress goes to stderr, the table to stdout and, with ``--out``, the results to a CSV file.
    """
    if args.epochs < 1:
        raise SystemExit("small-batch: --epochs must be at least 1")
    if min(args.batch_sizes) < 2:
        raise SystemExit(
            "small-batch: every batch size must be at least 2 (BatchNorm needs two samples)"
        )
    jobs = parallel.cores() if args.jobs is None else args.jobs
    if jobs < 1:
        raise SystemExit("small-batch: --jobs must be at least 1")
    sync = args.sync_ranks is not None
    ranks = args.sync_ranks if sync else args.ranks
    _check_ranks(ranks, sync, args.jobs)
    progress = not args.no_progress and sys.stderr.isatty() and ranks == 1
    group = distributed.process_group() if distributed.in_torchrun() else contextlib.nullcontext()
    try:
        with group:  # under torchrun: this process is one of the ranks
            rank = dist.get_rank() if dist.is_initialized() else 0
            results = run(
                args.norms,
                args.batch_sizes,
                args.seeds,
                args.epochs,
                args.base_lr,
                args.momentum,
                args.precise_bn,
                progress,
                jobs=jobs if ranks == 1 else 1,
                ranks=ranks,
                sync=sync,
            )
    except ValueError as e:  # e.g. a batch size larger than the training set, a negative lr
        raise SystemExit(f"small-batch: {e}") from None
    if rank != 0:  # rank 0 reports for all
        return 0
    B = "B" if ranks == 1 else f"{ranks} * B"
    print(
        f"LeNet on sklearn's digits ({digits.N_TEST} test images), "
        f"{args.epochs} epochs for every batch size B\n"
        f"SGD, lr = {args.base_lr} * {B} / 32 annealed to 0; norm layers' momentum {args.momentum}"
    )
    if ranks > 1:
        how = "synchronized (SyncBatchNorm)" if sync else "on each process's B images"
        print(f"{ranks} processes (gloo), B images each; BatchNorm {how}")
    if args.precise_bn:
        print("precise BN: running statistics re-estimated on the whole training set")
    print(results_table(results))
    if args.out is not None:
        write_csv(results, args.out)
        print(f"wrote {args.out}")
    return 0
