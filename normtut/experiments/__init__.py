"""Experiments that train small models with normtut's layers.

Run them with ``python -m normtut.experiments``.

small_batch  BatchNorm against GroupNorm (and LN, IN, SN) as the batch shrinks, on sklearn's digits.
"""

from . import small_batch

__all__ = ["small_batch"]
