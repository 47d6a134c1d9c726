"""convert_norm_layers: torch's layers to normtut's and back, in place, sharing the tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normtut
from normtut import convert_norm_layers
from normtut.convert import TWINS

pytestmark = pytest.mark.usefixtures("one_thread")


class Zoo(nn.Module):
    """Every torch layer with a normtut twin, in a list, a dict, a Sequential and as attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm1d(4)
        self.in1 = nn.InstanceNorm1d(4, affine=True, track_running_stats=True)
        self.lazy1 = nn.ModuleList([nn.LazyBatchNorm1d(), nn.LazyInstanceNorm1d()])
        self.body = nn.Sequential(
            nn.Conv2d(4, 4, 1),
            nn.BatchNorm2d(4, momentum=None),
            nn.InstanceNorm2d(4),
            nn.GroupNorm(2, 4),
            nn.LocalResponseNorm(3),
            nn.LazyBatchNorm2d(bias=False),
            nn.LazyInstanceNorm2d(affine=False),
        )
        self.norms = nn.ModuleDict(
            {
                "ln": nn.LayerNorm([4, 5, 5], bias=False),
                "rms": nn.RMSNorm(5, eps=1e-4),
                "bn3": nn.BatchNorm3d(4, affine=False),
                "in3": nn.InstanceNorm3d(4, affine=True),
                "lbn3": nn.LazyBatchNorm3d(),
                "lin3": nn.LazyInstanceNorm3d(),
                "sync": nn.SyncBatchNorm(4),  # no process group: BatchNorm
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, 4, 5, 5]
        seq = x.flatten(2)
        seq = self.lazy1[1](self.lazy1[0](self.in1(self.bn1(seq))))
        y = self.body(seq.reshape(x.shape))
        y = self.norms["rms"](self.norms["ln"](self.norms["sync"](y)))
        vol = y.unsqueeze(2).expand(-1, -1, 2, -1, -1)
        for k in ("bn3", "in3", "lbn3", "lin3"):
            vol = self.norms[k](vol)
        return vol


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


def _kinds(model: nn.Module) -> list[type]:
    return [type(m) for m in model.modules()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_every_layer(dtype):
    torch.manual_seed(0)
    model = Zoo().to(dtype)
    x = torch.randn(3, 4, 5, 5, dtype=dtype)
    model(x)  # the lazy layers infer their size (in torch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    kinds_before, tensors_before = _kinds(model), _tensors(model)
    model.eval()
    reference = model(x).detach()

    assert convert_norm_layers(model) is model  # in place
    converted = [t for t in _kinds(model) if t.__module__.startswith("normtut")]
    assert len(converted) == 17  # the lazy layers became eager on the first call
    assert not any(t in dict(TWINS) for t in _kinds(model))  # no torch norm layer left
    after = _tensors(model)
    assert list(after) == list(tensors_before)
    assert all(after[k] is tensors_before[k] for k in after)  # the very same tensors
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    assert not any(m.training for m in model.modules())  # the flags came along
    torch.testing.assert_close(model(x), reference, **tol)  # (train mode: the next test)

    convert_norm_layers(model, to="torch")
    assert _kinds(model) == kinds_before
    back = _tensors(model)
    assert all(back[k] is tensors_before[k] for k in back)
    assert torch.equal(model(x), reference)  # torch's own layers again: the same bits


def test_train_mode_outputs_and_running_buffers_match():
    """Two copies of one trained model: one converted to normtut, both trained one step."""
    torch.manual_seed(0)
    a = Zoo().double()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    a(x)
    b = Zoo().double()
    b(x)
    b.load_state_dict(a.state_dict())
    convert_norm_layers(b)
    ya, yb = a(x * 2 + 1), b(x * 2 + 1)
    torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-10)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=1e-10, atol=1e-10)


def test_optimizer_built_before_keeps_working_and_flags_are_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.LayerNorm(6))
    model[2].eval()  # a mixed state: one layer in eval, the rest in train
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    convert_norm_layers(model)
    assert isinstance(model[1], normtut.BatchNorm1d) and isinstance(model[2], normtut.LayerNorm)
    assert [m.training for m in model] == [True, True, False]
    before = model[1].weight.detach().clone()
    model(torch.randn(8, 6)).square().mean().backward()
    opt.step()  # the optimizer holds the same Parameter objects
    assert not torch.equal(model[1].weight.detach(), before)


def test_settings_changed_after_construction_are_kept():
    bn = nn.BatchNorm2d(3)
    bn.momentum, bn.eps = None, 1e-3
    layer = nn.Sequential(bn)
    convert_norm_layers(layer)
    assert (layer[0].momentum, layer[0].eps) == (None, 1e-3)
    assert repr(layer[0]) == repr(bn)


def test_top_level_layer_shared_layers_subclasses_and_bad_target():
    bn = nn.BatchNorm2d(3)
    twin = convert_norm_layers(bn)
    assert isinstance(twin, normtut.BatchNorm2d) and twin.weight is bn.weight
    shared = nn.GroupNorm(1, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    convert_norm_layers(model)
    assert model[0] is model[2] and isinstance(model[0], normtut.GroupNorm)

    class MyBN(nn.BatchNorm2d):  # a subclass may have its own forward: left alone
        pass

    other = nn.Sequential(MyBN(3), normtut.SwitchableNorm2d(3), normtut.FrozenBatchNorm2d(3))
    convert_norm_layers(other)
    assert [type(m) for m in other] == [MyBN, normtut.SwitchableNorm2d, normtut.FrozenBatchNorm2d]
    with pytest.raises(ValueError, match="normtut"):
        convert_norm_layers(model, to="numpy")


def test_lazy_layers_convert_before_their_first_call():
    model = nn.Sequential(nn.LazyBatchNorm2d(), nn.LazyInstanceNorm2d())
    convert_norm_layers(model)
    assert [type(m) for m in model] == [normtut.LazyBatchNorm2d, normtut.LazyInstanceNorm2d]
    model(torch.randn(2, 3, 4, 4))
    assert [type(m) for m in model] == [normtut.BatchNorm2d, normtut.InstanceNorm2d]
    assert model[0].num_features == 3
