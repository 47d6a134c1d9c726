"""Lazy BatchNorm/InstanceNorm layers against torch's: inferring num_features, then becoming eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch_inputs import module_inputs
from twins import F32, F64, assert_same_state, params, step

import normtut

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # a lazy InstanceNorm with nothing to infer keeps num_features = 0, and warns like torch's
    pytest.mark.filterwarnings("ignore:input's size at dim="),
]

# (torch's lazy class, normtut's lazy class, torch's eager class, normtut's eager class)
LAZY = [
    (nn.LazyBatchNorm1d, normtut.LazyBatchNorm1d, nn.BatchNorm1d, normtut.BatchNorm1d),
    (nn.LazyBatchNorm2d, normtut.LazyBatchNorm2d, nn.BatchNorm2d, normtut.BatchNorm2d),
    (nn.LazyBatchNorm3d, normtut.LazyBatchNorm3d, nn.BatchNorm3d, normtut.BatchNorm3d),
    (nn.LazyInstanceNorm1d, normtut.LazyInstanceNorm1d, nn.InstanceNorm1d, normtut.InstanceNorm1d),
    (nn.LazyInstanceNorm2d, normtut.LazyInstanceNorm2d, nn.InstanceNorm2d, normtut.InstanceNorm2d),
    (nn.LazyInstanceNorm3d, normtut.LazyInstanceNorm3d, nn.InstanceNorm3d, normtut.InstanceNorm3d),
]
IDS = [row[1].__name__ for row in LAZY]
KWARGS = [
    {},
    {"affine": False},
    {"track_running_stats": False},
    {"bias": False},
    {"eps": 1e-3, "momentum": None},
    {"affine": False, "track_running_stats": False},
    {"dtype": torch.float64},
]


def _uninitialized_state(m: nn.Module) -> list[tuple[str, bool, type]]:
    return [(k, is_lazy(v), type(v)) for k, v in m.state_dict(keep_vars=True).items()]


@pytest.mark.parametrize("row", LAZY, ids=IDS)
def test_signature_and_uninitialized_state(row):
    ref_cls, cls, *_ = row
    assert params(cls) == params(ref_cls)
    for kwargs in KWARGS:
        ours, ref = cls(**kwargs), ref_cls(**kwargs)
        assert repr(ours) == repr(ref)
        assert _uninitialized_state(ours) == _uninitialized_state(ref)
        assert ours.has_uninitialized_params() == ref.has_uninitialized_params()
        assert (ours.affine, ours.track_running_stats) == (ref.affine, ref.track_running_stats)


def _shape(cls: type[nn.Module]) -> tuple[int, ...]:
    d = int(cls.__name__[-2])  # 1, 2 or 3
    return (4, 3) + (5,) * d


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kwargs", KWARGS)
@pytest.mark.parametrize("row", LAZY, ids=IDS)
def test_first_call_infers_and_becomes_the_eager_class(row, kwargs, training):
    ref_cls, cls, ref_eager, eager = row
    torch.manual_seed(0)
    ours, ref = cls(**kwargs).train(training), ref_cls(**kwargs).train(training)
    dtype = kwargs.get("dtype", torch.float32)
    tol = F64 if dtype == torch.float64 else F32
    x = torch.randn(_shape(cls), dtype=dtype) * 2 + 1
    step(ours, ref, x, state=assert_same_state, **tol)
    assert type(ours) is eager and type(ref) is ref_eager
    # with nothing to materialize (no affine, no buffers) torch leaves num_features at 0
    stateless = not (ref.affine or ref.track_running_stats)
    assert ours.num_features == ref.num_features == (0 if stateless else 3)
    assert repr(ours) == repr(ref)
    step(ours, ref, x * 3, state=assert_same_state, **tol)  # and it goes on as the eager layer


def _lazy_samples(eager_cls: type[nn.Module], dtype: torch.dtype, training: bool):
    """torch's module_db samples for the eager class, built lazily (num_features dropped)."""
    for desc, args, kwargs, (x,), _ in module_inputs(eager_cls, dtype, training):
        yield desc, args[1:], kwargs, x


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("row", LAZY, ids=IDS)
def test_torch_module_db_inputs(row, training):
    """torch's own BatchNorm/InstanceNorm samples (module_db has none for the lazy classes)."""
    ref_cls, cls, ref_eager, _ = row
    for desc, args, kwargs, x in _lazy_samples(ref_eager, torch.float64, training):
        ours, ref = cls(*args, **kwargs), ref_cls(*args, **kwargs)
        ours.to(torch.float64).train(training)
        ref.to(torch.float64).train(training)
        try:  # (torch's lazy InstanceNorm raises on the unbatched samples: ours must too)
            step(ours, ref, x.detach(), state=assert_same_state, match_errors=True, **F64)
        except AssertionError as e:
            raise AssertionError(f"module_db sample {desc!r}") from e


def test_unbatched_instance_norm_reads_dim_1_as_torch():
    """torch infers num_features from input.shape[1] even for an unbatched (C, L) input: L."""
    x = torch.randn(3, 7)
    ours, ref = normtut.LazyInstanceNorm1d(), nn.LazyInstanceNorm1d()
    with pytest.raises(ValueError, match="expected input's size at dim=0"):
        ref(x)
    with pytest.raises(ValueError, match="expected input's size at dim=0"):
        ours(x)
    assert ours.num_features == ref.num_features == 7


@pytest.mark.parametrize("row", LAZY, ids=IDS)
def test_state_dict_loads_both_ways(row):
    ref_cls, cls, ref_eager, eager = row
    torch.manual_seed(0)
    trained = ref_eager(3, affine=True, track_running_stats=True)
    with torch.no_grad():
        trained.weight.uniform_(0.5, 1.5)
        trained.bias.normal_()
        trained.running_mean.normal_()
        trained.running_var.uniform_(0.5, 2.0)
        trained.num_batches_tracked.fill_(7)
    # an initialized state into an uninitialized layer materializes it, as in torch
    ours, ref = cls(), ref_cls()
    ours.load_state_dict(trained.state_dict())
    ref.load_state_dict(trained.state_dict())
    assert_same_state(ours, ref)
    assert not ours.has_uninitialized_params()
    # an uninitialized state into an uninitialized layer: nothing to load, nothing breaks
    fresh = cls()
    fresh.load_state_dict(ref_cls().state_dict())
    assert fresh.has_uninitialized_params()
    # Loading does not set num_features (torch leaves it at 0): BatchNorm runs, InstanceNorm,
    # which compares C with num_features, raises. Ours does the same.
    step(ours, ref, torch.randn(_shape(cls)), state=assert_same_state, match_errors=True)
    assert ours.num_features == ref.num_features == 0 and type(ours) is eager
    # and the eager normtut layer takes the torch layer's state
    back = eager(3, affine=True, track_running_stats=True)
    back.load_state_dict(ref.state_dict())
    assert_same_state(back, ref)


def test_factory_kwargs():
    ours = normtut.LazyBatchNorm2d(dtype=torch.float64, device="cpu")
    ours(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    assert all(t.dtype == torch.float64 for t in (ours.weight, ours.running_mean))
    assert ours.num_batches_tracked.dtype == torch.long
