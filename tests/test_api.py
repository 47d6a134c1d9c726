"""normtut's public API: torch's signatures where torch has the name, and a complete __all__."""

from __future__ import annotations

import inspect

import pytest
import torch.nn.functional as TF
from torch import nn
from twins import params

import normtut
from normtut import functional as F
from normtut.convert import TWINS

SHARED = sorted(
    name
    for name, obj in vars(F).items()
    if inspect.isfunction(obj) and not name.startswith("_") and hasattr(TF, name)
)


def test_the_functional_twins_are_all_there():
    expected = {"batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm"}
    assert expected | {"local_response_norm", "normalize"} <= set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_functional_signature_is_torchs(name):
    """Every normtut.functional function named like a torch.nn.functional one takes torch's
    parameters: names, order, kinds and defaults."""
    assert params(getattr(F, name)) == params(getattr(TF, name))


@pytest.mark.parametrize("ref_cls, cls", TWINS, ids=[c.__name__ for _, c in TWINS])
def test_layer_signature_is_torchs(ref_cls, cls):
    assert cls.__name__ == ref_cls.__name__
    assert params(cls) == params(ref_cls)
    assert getattr(normtut, cls.__name__) is cls


def test_all_is_complete():
    """Every name in __all__ exists, and every public layer class of normtut is in __all__."""
    for name in normtut.__all__:
        assert hasattr(normtut, name), name
    layers = {
        obj.__name__
        for module in vars(normtut).values()
        if inspect.ismodule(module) and module.__name__.startswith("normtut.")
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, nn.Module)
        and obj.__module__.startswith("normtut.")
        and not obj.__module__.startswith("normtut.experiments")
        and not obj.__name__.startswith("_")
    }
    assert layers <= set(normtut.__all__), layers - set(normtut.__all__)
    for name in ("SwitchableNorm1d", "RMSNorm", "LocalResponseNorm", "convert_norm_layers"):
        assert name in normtut.__all__
