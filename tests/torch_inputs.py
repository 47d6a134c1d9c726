"""torch's own test inputs for a layer: the ``module_db`` samples of torch.testing._internal.

Imported as ``from torch_inputs import ...`` (like twins.py). ``module_db`` is what torch's own
``TestModule`` suite runs every module on; using it here means normtut is checked on the
cases PyTorch's developers chose, not only on ours.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.testing._internal.common_modules import module_db


def module_inputs(
    torch_cls: type[nn.Module],
    dtype: torch.dtype = torch.float64,
    training: bool = True,
    requires_grad: bool = True,
) -> Iterator[tuple[str, tuple, dict, tuple, dict]]:
    """(desc, constructor args, constructor kwargs, forward args, forward kwargs) per sample."""
    (info,) = [m for m in module_db if m.module_cls is torch_cls]
    samples = info.module_inputs_func(
        info, device="cpu", dtype=dtype, requires_grad=requires_grad, training=training
    )
    for s in samples:
        c, f = s.constructor_input, s.forward_input
        yield s.desc, tuple(c.args), dict(c.kwargs), tuple(f.args), dict(f.kwargs)


def sample_ids(torch_cls: type[nn.Module]) -> list[str]:
    """The ``desc`` of each sample, for pytest ids."""
    return [d or "default" for d, *_ in module_inputs(torch_cls)]
