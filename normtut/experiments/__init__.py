"""What only the book's chapters use; the layers never import from here.

The digits experiments (run them with ``python -m normtut.experiments``) and the
models they train, the figures the chapters draw, the double-well landscape of the
momentum chapter, the running-statistics recorder, and seed 002's buggy specimen.

small_batch  BatchNorm against GroupNorm (and LN, IN, SN) as the batch shrinks, on sklearn's digits.
"""

from . import small_batch

__all__ = ["small_batch"]
