"""FrozenBatchNorm2d and freeze_batchnorm against torch.nn.BatchNorm2d in eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normtut
from normtut import FrozenBatchNorm2d, freeze_batchnorm


def _trained_bn(C: int = 3, dtype=torch.float32, **kw) -> nn.BatchNorm2d:
    """A torch BatchNorm2d with non-trivial running statistics and affine parameters."""
    bn = nn.BatchNorm2d(C, dtype=dtype, **kw)
    with torch.no_grad():
        for _ in range(5):
            bn(torch.randn(4, C, 5, 5, dtype=dtype) * 3 + 2)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 2.0)
        if bn.bias is not None:
            bn.bias.uniform_(-1.0, 1.0)
    return bn


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.0])
def test_matches_torch_batchnorm_in_eval(dtype, tol, eps):
    torch.manual_seed(0)
    bn = _trained_bn(4, dtype).eval()
    bn.eps = eps  # torch refuses eps=0 in training, not in eval
    frozen = FrozenBatchNorm2d(4, eps=eps).to(dtype)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 4, 6, 7, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    for mode in (True, False):  # train or eval: the frozen layer does not care
        frozen.train(mode)
        y, ref = frozen(x), bn(x2)
        torch.testing.assert_close(y, ref, rtol=tol, atol=tol)
    y.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=tol, atol=tol)


def test_everything_is_a_buffer_and_nothing_moves():
    torch.manual_seed(0)
    frozen = FrozenBatchNorm2d(3)
    assert list(frozen.parameters()) == []
    assert [n for n, _ in frozen.named_buffers()] == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
    ]
    ref = nn.BatchNorm2d(3)  # defaults agree with a fresh BatchNorm2d
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(frozen, name), getattr(ref, name))
    frozen.train()
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen(torch.randn(4, 3, 2, 2) * 5 + 1)
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, before[k])


def test_loads_a_batchnorm_state_dict_ignoring_num_batches_tracked():
    bn = _trained_bn(3)
    assert "num_batches_tracked" in bn.state_dict()
    frozen = FrozenBatchNorm2d(3)
    result = frozen.load_state_dict(bn.state_dict())  # strict: no unexpected key
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(frozen.state_dict()) == set(bn.state_dict()) - {"num_batches_tracked"}
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(frozen, name), getattr(bn, name))


def test_repr_is_torchvisions():
    # torchvision.ops.misc.FrozenBatchNorm2d.__repr__: f"{cls}({num_features}, eps={eps})"
    assert repr(FrozenBatchNorm2d(8)) == "FrozenBatchNorm2d(8, eps=1e-05)"
    assert repr(FrozenBatchNorm2d(2, eps=0.001)) == "FrozenBatchNorm2d(2, eps=0.001)"


class Block(nn.Module):
    """A custom module holding BN layers as attributes, in a list and in a dict."""

    def __init__(self, C: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.bn = normtut.BatchNorm2d(C)
        self.branches = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(C, C, 1), nn.BatchNorm2d(C)) for _ in range(2)]
        )
        self.extra = nn.ModuleDict({"norm": nn.BatchNorm2d(C, affine=False)})

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y + sum(b(y) for b in self.branches)
        return self.extra["norm"](y)


def _convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(Block(4), nn.Identity()),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 5),
        nn.BatchNorm1d(5),
    )


def _trained_convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = _convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):  # move running stats and affine parameters away from their defaults
        opt.zero_grad()
        model(torch.randn(6, 3, 8, 8) + 0.5).square().mean().backward()
        opt.step()
    return model


def _count(model: nn.Module, cls) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


def test_freeze_convnet_outputs_buffers_and_parameters():
    model = _trained_convnet()
    reference = _trained_convnet().eval()  # the same trained network, unfrozen
    n_bn2d = _count(model, nn.BatchNorm2d) + _count(model, normtut.BatchNorm2d)
    assert n_bn2d == 6
    bn2d_params = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, (nn.BatchNorm2d, normtut.BatchNorm2d))
        for p in m.parameters()
    )
    n_params = sum(p.numel() for p in model.parameters())

    frozen = freeze_batchnorm(model)
    assert frozen is model  # in place
    assert _count(model, FrozenBatchNorm2d) == n_bn2d
    assert _count(model, nn.BatchNorm2d) == _count(model, normtut.BatchNorm2d) == 0
    assert _count(model, nn.BatchNorm1d) == 1  # not a BatchNorm2d: left alone
    assert sum(p.numel() for p in model.parameters()) == n_params - bn2d_params
    frozen_layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert all(
        not isinstance(b, nn.Parameter) and not b.requires_grad
        for m in frozen_layers
        for b in m.buffers()
    )

    # In eval mode: same output as the eval-mode original.
    x = torch.randn(3, 3, 8, 8)
    model.eval()
    torch.testing.assert_close(model(x), reference(x))

    # In train mode the frozen layers still use the stored statistics and update nothing; compare
    # with the original where only the BatchNorm1d trains (batch statistics).
    model.train()
    reference[-1].train()
    before = {
        k: v.clone() for k, v in model.state_dict().items() if not k.startswith("8.")
    }  # 8: the BN1d
    torch.testing.assert_close(model(x), reference(x))
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_frozen_state_matches_original_and_state_dicts_load():
    original = _trained_convnet()
    model = freeze_batchnorm(_trained_convnet())
    sd, osd = model.state_dict(), original.state_dict()
    no_affine = {
        "3.0.extra.norm.weight",
        "3.0.extra.norm.bias",
        "5.bias",
    }  # affine=False, bias=False
    assert no_affine.isdisjoint(osd)
    assert (
        set(sd)
        == {k for k in osd if not k.endswith("num_batches_tracked") or k.startswith("8.")}
        | no_affine
    )
    for k in sd:
        if k in osd:
            assert torch.equal(sd[k], osd[k]), k
    # affine=False -> weight 1, bias 0; bias=False -> bias 0
    norm = model[3][0].extra["norm"]
    assert torch.equal(norm.weight, torch.ones(4)) and torch.equal(norm.bias, torch.zeros(4))
    assert torch.equal(model[5].bias, torch.zeros(4))

    # A frozen fresh network loads the original's checkpoint (num_batches_tracked ignored) ...
    fresh = freeze_batchnorm(_convnet())
    missing, unexpected = fresh.load_state_dict(osd, strict=False)
    assert unexpected == [] and set(missing) == no_affine
    fresh.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fresh(x), original.eval()(x))
    # ... and its own state dict, strictly.
    again = freeze_batchnorm(_convnet())
    again.load_state_dict(sd)
    torch.testing.assert_close(again.eval()(x), original(x))


def test_top_level_batchnorm_returns_a_new_frozen_layer():
    bn = _trained_bn(3).eval()
    frozen = freeze_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen is not bn
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(frozen(x), bn(x))
    assert isinstance(freeze_batchnorm(nn.BatchNorm1d(3)), nn.BatchNorm1d)  # nothing to do


def test_dtype_and_shared_layers():
    bn = _trained_bn(2, torch.float64)
    model = nn.Sequential(bn, nn.ReLU(), bn)  # one layer used twice
    freeze_batchnorm(model)
    assert model[0] is model[2] and model[0].running_mean.dtype == torch.float64
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    bn.eval()
    torch.testing.assert_close(model(x), bn(torch.relu(bn(x))))


def test_track_running_stats_false_is_refused_and_nothing_changes():
    model = nn.Sequential(
        nn.BatchNorm2d(3), nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False))
    )
    with pytest.raises(ValueError, match="track_running_stats=False"):
        freeze_batchnorm(model)
    assert _count(model, FrozenBatchNorm2d) == 0  # checked before any replacement
    with pytest.raises(ValueError, match="track_running_stats=False"):
        freeze_batchnorm(normtut.BatchNorm2d(3, track_running_stats=False))


# --- torchvision's forward: x * scale + shift, with the usual type promotion ------------------


def _torchvision_forward(frozen: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """torchvision.ops.misc.FrozenBatchNorm2d.forward, restated (torchvision is not installed):
    scale = w * (rv + eps).rsqrt(); bias = b - rm * scale; x * scale + bias."""
    w, b = frozen.weight.reshape(1, -1, 1, 1), frozen.bias.reshape(1, -1, 1, 1)
    rv, rm = frozen.running_var.reshape(1, -1, 1, 1), frozen.running_mean.reshape(1, -1, 1, 1)
    scale = w * (rv + frozen.eps).rsqrt()
    return x * scale + (b - rm * scale)


@pytest.mark.parametrize(
    "x_dtype, buffer_dtype, out_dtype",
    [
        (torch.float16, torch.float32, torch.float32),
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.float64, torch.float32, torch.float64),
        (torch.float32, torch.float64, torch.float64),
        (torch.float32, torch.float32, torch.float32),
        (torch.float16, torch.float16, torch.float16),
    ],
)
def test_type_promotion_is_torchvisions(x_dtype, buffer_dtype, out_dtype):
    """A float16 batch through float32 buffers gives float32, a float64 batch float64: no error
    and no cast down, as torchvision's layer (plain tensor arithmetic)."""
    torch.manual_seed(0)
    frozen = FrozenBatchNorm2d(3).to(buffer_dtype)
    frozen.load_state_dict(_trained_bn(3).to(buffer_dtype).state_dict())
    x = (torch.randn(2, 3, 4, 4) * 2 + 1).to(x_dtype)
    y = frozen(x)
    assert y.dtype == out_dtype
    assert torch.equal(y, _torchvision_forward(frozen, x))
    tol = 1e-2 if torch.float16 in (x_dtype, buffer_dtype) or x_dtype == torch.bfloat16 else 1e-5
    reference = nn.BatchNorm2d(3).double().eval()
    reference.load_state_dict(frozen.state_dict(), strict=False)
    torch.testing.assert_close(y.double(), reference(x.double()), rtol=tol, atol=tol)
