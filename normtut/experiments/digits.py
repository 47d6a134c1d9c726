"""The digits data and the training loop that every chapter's experiment shares.

Data: scikit-learn's 1797 handwritten digits (8x8 pixels, 16 grey levels, bundled with the
package, no download), split once: 357 test images and 1440 = 45 * 32 training images, so
that every batch size from 2 to 32 sees all training images in each epoch.

Training: ``train`` runs SGD (or Adam) over shuffled mini-batches, optionally along a
cosine learning-rate schedule, and calls ``after_step`` after every step for logging
(progress bars, mixture weights, activation statistics). Everything is deterministic:
``torch.manual_seed(seed)`` before a model is built, a ``torch.Generator`` seeded with the
same ``seed`` for the shuffling, and one CPU thread while training.

Training also switches oneDNN off (``aten_convolutions``): on 8x8 images in batches of 2
to 32 its per-call setup costs more than the arithmetic, and ATen's own convolutions
make a LeNet step without normalization about twice as fast.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .models import LeNet

N_TEST = 357  # test images; the other 1440 = 45 * 32 train
SPLIT_SEED = 0  # the one shuffle that decides which image is in which split

AfterStep = Callable[[int, float], None]  # (step number from 1, loss of that step) -> None


@dataclass(frozen=True)
class Digits:
    """A train/test split of the digits: images [N, 1, 8, 8] in [0, 1], labels [N]."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits() -> Digits:
    """THE split: sklearn's 1797 digits shuffled with seed 0, 357 for testing, 1440 for training."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = order[:N_TEST], order[N_TEST:]
    return Digits(x[train], y[train], x[test], y[test])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with torch.set_num_threads(1), then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def aten_convolutions() -> Iterator[None]:
    """Run the block with oneDNN (mkldnn) off: ATen's own convolution and pooling kernels.

    They compute the same sums in another order, so results differ in the last bits.
    """
    # set_flags changes this one flag: torch.backends.mkldnn.flags() would also set TF32 (and
    # warn), and assigning .enabled fails once torch.backends.disable_global_flags() ran.
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.set_flags(_enabled=False, _fp32_precision=None)
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(_enabled=before, _fp32_precision=None)


def lenet(norm: str, seed: int, **options) -> LeNet:
    """Seed 002's LeNet for 8x8 digits with ``norm`` in its four slots, weights drawn from ``seed``.

    ReLU activations unless ``options`` say otherwise (``activation=nn.Sigmoid`` is the
    seed's); other options go to ``LeNet`` (e.g. ``norm1d=nn.Identity``).
    """
    torch.manual_seed(seed)
    return LeNet(norm, in_size=8, **{"activation": nn.ReLU, **options})


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """'sgd': SGD with momentum rho = 0.9; 'adam': Adam with torch's default betas.

    SGD runs fused: one kernel updates every parameter (the update rule of
    ``normtut.optim.SGD``'s loop, in a third of its time for LeNet).
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, fused=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; valid names: sgd, adam")


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches in one pass over ``n`` samples (a smaller last batch counts unless dropped)."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def make_schedule(name: str, optimizer: torch.optim.Optimizer, steps: int):
    """None for 'constant'; for 'cosine', torch's CosineAnnealingLR over ``steps`` steps.

    lr_t = lr * (1 + cos(pi * t / T)) / 2 after step t of T: from lr down to 0 at the last step.
    """
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    raise ValueError(f"unknown schedule {name!r}; valid names: constant, cosine")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> float:
    """One step on the batch (x, y) with the cross-entropy loss; returns the loss."""
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train(
    model: nn.Module,
    data: Digits,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    optimizer: str = "sgd",
    schedule: str = "constant",
    drop_last: bool = True,
    after_step: AfterStep | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> list[float]:
    """Train ``model`` in place on the training images; return the loss of every step.

    Each epoch shuffles with a generator seeded by ``seed``; ``drop_last`` drops a smaller
    last batch. ``schedule``: see ``make_schedule``. An inf or NaN loss ends training.
    With ``world_size`` processes (``model`` in DistributedDataParallel) every process draws
    the same batches of ``batch_size`` and trains on the ``rank``-th of ``world_size`` slices
    of each (``tensor_split``); a non-finite loss then does not end training (no rank may
    leave the others waiting).
    """
    n = len(data.y_train)
    per_epoch = steps_per_epoch(n, batch_size, drop_last)
    if batch_size < 1 or per_epoch == 0:
        raise ValueError(f"batch_size must be between 1 and {n}, got {batch_size}")
    losses: list[float] = []
    with one_thread(), aten_convolutions():
        opt = make_optimizer(optimizer, model.parameters(), lr)
        scheduler = make_schedule(schedule, opt, epochs * per_epoch)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(n, generator=generator).split(batch_size)[:per_epoch]:
                batch = batch.tensor_split(world_size)[rank]  # this process's share
                losses.append(train_step(model, opt, data.x_train[batch], data.y_train[batch]))
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step(len(losses), losses[-1])
                if not math.isfinite(losses[-1]) and world_size == 1:  # diverged: nothing to learn
                    return losses
    return losses


@torch.no_grad()
def error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Percentage of ``x`` that ``model`` classifies wrongly, in eval mode (running statistics).

    The model's mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        return percent_wrong(model(x), y)
    finally:
        model.train(was_training)


def percent_wrong(logits: Tensor, y: Tensor) -> float:
    """Percentage of the rows of ``logits`` whose largest entry is not at the label ``y``."""
    return (logits.argmax(1) != y).double().mean().item() * 100
