"""Memory layouts: the strides torch's normalization kernels give their results.

torch's BatchNorm and GroupNorm answer in the layout of their input if it is channels_last
(``batch_norm_format``, ``suggest_memory_format``), else contiguous; InstanceNorm and
LayerNorm always answer contiguous. normtut's layers copy their input into that layout
first; every elementwise result, forward and backward, then keeps it.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The order in which a channels_last tensor's strides grow: C, then W, H (D), then N.
_CHANNELS_LAST_ORDER = {4: (1, 3, 2, 0), 5: (1, 4, 3, 2, 0)}


def suggest_memory_format(x: Tensor) -> torch.memory_format:
    """``x.suggest_memory_format()`` of torch's C++ (``is_channels_last_strides_2d/3d``).

    channels_last (or channels_last_3d) if the strides of a 4-D (5-D) ``x`` grow in the
    order C, W, H, (D,) N; contiguous for anything else and for the ambiguous cases
    (a size-0 axis, a broadcast channel axis, N's stride equal to C's).
    """
    order = _CHANNELS_LAST_ORDER.get(x.dim())
    if order is None or x.stride(1) == 0:
        return torch.contiguous_format
    smallest = 0  # the least stride the next axis may have
    for d in order:
        size, stride = x.shape[d], x.stride(d)
        if size == 0 or stride < smallest or (d == 0 and smallest == x.stride(1)):
            return torch.contiguous_format
        smallest = stride * size if size > 1 else stride
    return torch.channels_last if x.dim() == 4 else torch.channels_last_3d


def batch_norm_format(x: Tensor) -> torch.memory_format:
    """The layout torch's CPU batch_norm answers in: a dense input's own, else the suggested.

    Dense means contiguous or channels_last(_3d) contiguous; with size-1 axes a tensor may
    be both, and then contiguous wins.
    """
    if x.is_contiguous():
        return torch.contiguous_format
    for fmt, rank in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if x.dim() == rank and x.is_contiguous(memory_format=fmt):
            return fmt
    return suggest_memory_format(x)


def like(t: Tensor, x: Tensor) -> Tensor:
    """``t`` laid out in memory as the dense ``x`` is: a copy only if their strides differ."""
    if t.stride() == x.stride():
        return t
    order = sorted(range(x.dim()), key=x.stride, reverse=True)  # outermost axis first
    inverse = sorted(range(x.dim()), key=order.__getitem__)
    return t.permute(order).contiguous().permute(inverse)
