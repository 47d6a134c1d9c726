"""What only the book's chapters use; the layers never import from here.

The digits experiments (run them with ``python -m normtut.experiments``) and the
models they train, the figures the chapters draw, the double-well landscape of the
momentum chapter, the running-statistics recorder, and seed 002's buggy specimen.

digits       the one digits train/test split and the one training loop of every experiment.
small_batch  BatchNorm against GroupNorm (and LN, IN, SN) as the batch shrinks, on the digits.
parallel     the small-batch cells in worker processes, with one progress bar.
distributed  ranks of a process group on one machine (gloo), started as torchrun starts them.
sync_bn      BatchNorm across processes: a two-process demonstration, what crosses the wire.
why_bn       the same LeNet with and without BatchNorm at several learning rates.
layer_stats  what a hidden layer sees during training, and how far it drifts.
gradients    gradient sizes layer by layer at initialization, with and without BatchNorm.
sn_digits    a small convnet with SwitchableNorm2d learning its mixtures on the digits.
"""

from . import digits, distributed, small_batch

__all__ = ["digits", "small_batch", "distributed"]
