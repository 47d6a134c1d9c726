"""normtut.fusion against torch.nn.utils.fusion, and fold_batchnorm against the unfolded model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import fusion as torch_fusion
from torch.nn.utils.parametrizations import weight_norm
from twins import params

import normtut
from normtut import fusion

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = {"rtol": 1e-10, "atol": 1e-10}
BN_CLASSES = {  # dims of the convolution's output -> (torch's, normtut's)
    3: (nn.BatchNorm1d, normtut.BatchNorm1d),
    4: (nn.BatchNorm2d, normtut.BatchNorm2d),
    5: (nn.BatchNorm3d, normtut.BatchNorm3d),
}
CONVS = {
    nn.Conv1d: 3,
    nn.Conv2d: 4,
    nn.Conv3d: 5,
    nn.ConvTranspose1d: 3,
    nn.ConvTranspose2d: 4,
    nn.ConvTranspose3d: 5,
}


def trained(bn: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """``bn`` after three training steps on shifted, scaled data, with a random affine, in eval."""
    gen = torch.Generator().manual_seed(seed)
    dtype = bn.running_mean.dtype if bn.running_mean is not None else torch.float32
    with torch.no_grad():
        bn.train()
        for _ in range(3):
            bn(torch.randn(shape, generator=gen, dtype=dtype) * 3 + 1)
        if bn.weight is not None:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) * 3 - 1.5)  # signs too
        if bn.bias is not None:
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen))
    return bn.eval()


def randomize_stats(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Train-mode passes (running statistics move), random affine parameters; returns ``model``."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(x * 2 + 0.5)
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # BN gamma: any sign
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 3 - 1.5)
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def assert_same_layer(ours: nn.Module, theirs: nn.Module) -> None:
    """Same class and mode, and weight and bias equal bit for bit, with the same dtype and flags."""
    assert type(ours) is type(theirs) and ours.training == theirs.training
    for name in ("weight", "bias"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert isinstance(a, nn.Parameter) and isinstance(b, nn.Parameter), name
        assert a.dtype == b.dtype and a.requires_grad == b.requires_grad, name
        assert torch.equal(a, b), name


def conv_and_bn(conv_cls, bn_cls, groups=1, conv_bias=True, dtype=torch.float64, **bn_kwargs):
    dims = CONVS[conv_cls]
    conv = conv_cls(4, 6, 3, groups=groups, bias=conv_bias, dtype=dtype).eval()
    bn = trained(bn_cls(6, dtype=dtype, **bn_kwargs), (5, 6) + (4,) * (dims - 2))
    return conv, bn, torch.randn((2, 4) + (5,) * (dims - 2), dtype=dtype)


# ---------------------------------------------------------------------------
# fuse_conv_bn_eval / fuse_linear_bn_eval: the same layers as torch's
# ---------------------------------------------------------------------------


def test_signatures_are_torchs():
    assert params(fusion.fuse_conv_bn_eval) == params(torch_fusion.fuse_conv_bn_eval)
    assert params(fusion.fuse_linear_bn_eval) == params(torch_fusion.fuse_linear_bn_eval)
    assert params(fusion.fuse_linear_bn_weights) == params(torch_fusion.fuse_linear_bn_weights)
    # normtut's adds a keyword-only `groups` after torch's parameters
    assert params(fusion.fuse_conv_bn_weights)[:-1] == params(torch_fusion.fuse_conv_bn_weights)
    assert params(fusion.fuse_conv_bn_weights)[-1][:2] == ("groups", 3)  # KEYWORD_ONLY


@pytest.mark.parametrize("conv_cls", list(CONVS), ids=lambda c: c.__name__)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("bias", [True, False], ids=["conv_bias", "no_conv_bias"])
@pytest.mark.parametrize(
    "bn_kwargs", [{}, {"affine": False}, {"bias": False}], ids=["affine", "no_affine", "no_beta"]
)
@pytest.mark.parametrize("which", [0, 1], ids=["torch_bn", "normtut_bn"])
def test_fuse_conv_equals_torch(conv_cls, groups, bias, bn_kwargs, which):
    torch.manual_seed(0)
    transpose = conv_cls.__name__.startswith("ConvTranspose")
    bn_cls = BN_CLASSES[CONVS[conv_cls]][which]
    conv, bn, x = conv_and_bn(conv_cls, bn_cls, groups, bias, **bn_kwargs)
    weight_before = conv.weight.clone()
    fused = fusion.fuse_conv_bn_eval(conv, bn, transpose=transpose)
    torch.testing.assert_close(fused(x), bn(conv(x)), **F64)
    assert fused is not conv and torch.equal(conv.weight, weight_before)
    if transpose and groups > 1:
        # torch 2.13 cannot (pytorch/pytorch#180995): compare with its fold of each group.
        G, per_group = groups, conv.weight.shape[0] // groups
        chunks = [slice(g * per_group, (g + 1) * per_group) for g in range(G)]
        outs = [slice(g * 3, (g + 1) * 3) for g in range(G)]  # 6 outputs, 3 per group
        parts = [
            torch_fusion.fuse_conv_bn_weights(
                conv.weight[i],
                None if conv.bias is None else conv.bias[o],
                bn.running_mean[o],
                bn.running_var[o],
                bn.eps,
                None if bn.weight is None else bn.weight[o],
                None if bn.bias is None else bn.bias[o],
                transpose=True,
            )
            for i, o in zip(chunks, outs, strict=True)
        ]
        assert torch.equal(fused.weight, torch.cat([w for w, _ in parts]))
        assert torch.equal(fused.bias, torch.cat([b for _, b in parts]))
        return
    assert_same_layer(fused, torch_fusion.fuse_conv_bn_eval(conv, bn, transpose=transpose))


@pytest.mark.parametrize(
    "conv_dtype,bn_dtype",
    [
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float64),
    ],
)
def test_fuse_conv_dtypes_as_torch(conv_dtype, bn_dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, dtype=conv_dtype).eval()
    bn = trained(nn.BatchNorm2d(5, dtype=bn_dtype), (4, 5, 3, 3))
    assert_same_layer(fusion.fuse_conv_bn_eval(conv, bn), torch_fusion.fuse_conv_bn_eval(conv, bn))


def test_fuse_conv_frozen_batchnorm_as_the_bn_it_froze():
    torch.manual_seed(0)
    conv, bn, x = conv_and_bn(nn.Conv2d, nn.BatchNorm2d)
    frozen = normtut.FrozenBatchNorm2d(6).double()
    frozen.load_state_dict(bn.state_dict())
    fused = fusion.fuse_conv_bn_eval(conv, frozen.eval())
    assert_same_layer(fused, torch_fusion.fuse_conv_bn_eval(conv, bn))


def test_fuse_conv_requires_grad_as_torch():
    torch.manual_seed(0)
    conv, bn, _ = conv_and_bn(nn.Conv2d, nn.BatchNorm2d)
    conv.weight.requires_grad_(False)
    ours, theirs = fusion.fuse_conv_bn_eval(conv, bn), torch_fusion.fuse_conv_bn_eval(conv, bn)
    assert not ours.weight.requires_grad and ours.bias.requires_grad
    assert_same_layer(ours, theirs)


@pytest.mark.parametrize("bias", [True, False], ids=["linear_bias", "no_linear_bias"])
@pytest.mark.parametrize("which", [nn.BatchNorm1d, normtut.BatchNorm1d], ids=["torch", "normtut"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fuse_linear_equals_torch(bias, which, dtype):
    torch.manual_seed(0)
    linear = nn.Linear(3, 5, bias=bias, dtype=dtype).eval()
    bn = trained(which(5, dtype=dtype), (8, 5))
    fused = fusion.fuse_linear_bn_eval(linear, bn)
    assert_same_layer(fused, torch_fusion.fuse_linear_bn_eval(linear, bn))
    x = torch.randn(4, 3, dtype=dtype)
    torch.testing.assert_close(fused(x), bn(linear(x)), **(F64 if dtype == torch.float64 else {}))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "bn_kwargs", [{"affine": False}, {"bias": False}], ids=["no_affine", "no_beta"]
)
def test_fuse_linear_without_affine(bias, bn_kwargs):
    """torch's fuse_linear_bn_weights needs gamma and beta; normtut takes 1 and 0, as for conv."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 5, bias=bias, dtype=torch.float64).eval()
    bn = trained(normtut.BatchNorm1d(5, dtype=torch.float64, **bn_kwargs), (8, 5))
    fused = fusion.fuse_linear_bn_eval(linear, bn)
    ones, zeros = torch.ones_like(bn.running_mean), torch.zeros_like(bn.running_mean)
    w, b = torch_fusion.fuse_linear_bn_weights(
        linear.weight, linear.bias, bn.running_mean, bn.running_var, bn.eps,
        ones if bn.weight is None else bn.weight, zeros if bn.bias is None else bn.bias,
    )  # fmt: skip
    assert torch.equal(fused.weight, w) and fused.weight.requires_grad == w.requires_grad
    torch.testing.assert_close(fused.bias, b, rtol=0, atol=0)  # + 0 where beta is None
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(fused(x), bn(linear(x)), **F64)


@pytest.mark.parametrize("bias", [True, False])
def test_fuse_linear_one_bn_feature(bias):
    """BatchNorm1d(1) on (N, 1, L) after a Linear mapping L: one scale for every output."""
    torch.manual_seed(0)
    linear = nn.Linear(3, 5, bias=bias, dtype=torch.float64).eval()
    bn = trained(nn.BatchNorm1d(1, dtype=torch.float64), (8, 1, 5))
    ours, theirs = (
        fusion.fuse_linear_bn_eval(linear, bn),
        torch_fusion.fuse_linear_bn_eval(linear, bn),
    )
    assert torch.equal(ours.weight, theirs.weight)
    assert ours.bias.shape == (5,)  # torch's bias has 1 value when the linear layer has none
    assert torch.equal(ours.bias, theirs.bias.expand(5))
    x = torch.randn(4, 1, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), bn(linear(x)), **F64)


# ---------------------------------------------------------------------------
# Errors: torch's types (and messages)
# ---------------------------------------------------------------------------


def same_error(ours, theirs, exc):
    with pytest.raises(exc) as ours_info:
        ours()
    with pytest.raises(exc) as theirs_info:
        theirs()
    assert str(ours_info.value) == str(theirs_info.value)


@pytest.mark.parametrize("which", ["layer", "bn"])
def test_refuses_training_mode(which):
    conv, linear = nn.Conv2d(3, 6, 1).eval(), nn.Linear(3, 6).eval()
    bn2d, bn1d = nn.BatchNorm2d(6).eval(), normtut.BatchNorm1d(6).eval()
    for m in (conv, linear) if which == "layer" else (bn2d, bn1d):
        m.train()
    same_error(
        lambda: fusion.fuse_conv_bn_eval(conv, bn2d),
        lambda: torch_fusion.fuse_conv_bn_eval(conv, bn2d),
        AssertionError,
    )
    same_error(
        lambda: fusion.fuse_linear_bn_eval(linear, bn1d),
        lambda: torch_fusion.fuse_linear_bn_eval(linear, bn1d),
        AssertionError,
    )


@pytest.mark.parametrize("which", [nn.BatchNorm2d, normtut.BatchNorm2d])
def test_refuses_bn_without_running_stats(which):
    conv = nn.Conv2d(3, 6, 1).eval()
    bn = which(6, track_running_stats=False).eval()
    same_error(
        lambda: fusion.fuse_conv_bn_eval(conv, bn),
        lambda: torch_fusion.fuse_conv_bn_eval(conv, bn),
        AssertionError,
    )
    linear, bn1 = nn.Linear(3, 6).eval(), nn.BatchNorm1d(6, track_running_stats=False).eval()
    same_error(
        lambda: fusion.fuse_linear_bn_eval(linear, bn1),
        lambda: torch_fusion.fuse_linear_bn_eval(linear, bn1),
        AssertionError,
    )


def test_refuses_mismatched_features():
    linear, bn = nn.Linear(3, 4).eval(), nn.BatchNorm1d(5).eval()
    same_error(
        lambda: fusion.fuse_linear_bn_eval(linear, bn),
        lambda: torch_fusion.fuse_linear_bn_eval(linear, bn),
        AssertionError,
    )
    conv, bn2 = nn.Conv2d(3, 4, 1).eval(), nn.BatchNorm2d(5).eval()
    with pytest.raises(RuntimeError, match="4 output channels but the BatchNorm normalizes 5"):
        fusion.fuse_conv_bn_eval(conv, bn2)
    with pytest.raises(RuntimeError):
        torch_fusion.fuse_conv_bn_eval(conv, bn2)


def test_refuses_a_transpose_flag_that_contradicts_the_layer():
    """torch folds the wrong axis without a word when in_channels == out_channels."""
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(6, 6, 3, dtype=torch.float64).eval()
    bn = trained(nn.BatchNorm2d(6, dtype=torch.float64), (4, 6, 5, 5))
    with pytest.raises(RuntimeError, match="pass transpose=True"):
        fusion.fuse_conv_bn_eval(ct, bn)
    with pytest.raises(RuntimeError, match="pass transpose=False"):
        fusion.fuse_conv_bn_eval(nn.Conv2d(6, 6, 3).eval(), bn, transpose=True)


# ---------------------------------------------------------------------------
# fold_batchnorm
# ---------------------------------------------------------------------------


def batchnorms(model: nn.Module) -> list[str]:
    return [
        n
        for n, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, fusion.BATCHNORMS)
    ]


def assert_folds(model: nn.Module, x: torch.Tensor, left: list[str], **tol) -> nn.Module:
    """fold_batchnorm(model) reproduces model in eval, keeps the BNs named ``left``, changes nothing."""
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    folded = fusion.fold_batchnorm(model)
    assert all(not m.training for m in folded.modules())
    assert batchnorms(folded) == left
    with torch.no_grad():
        ref = copy.deepcopy(model).eval()(x)
        torch.testing.assert_close(folded(x), ref, **(tol or F64))
    assert [m.training for m in model.modules()] == modes  # the original is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    return folded


def test_nested_model_with_unfoldable_batchnorms():
    torch.manual_seed(0)
    inner = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),
        normtut.BatchNorm2d(8),  # folds
        nn.ReLU(),
        nn.BatchNorm2d(8),  # after a ReLU: stays
    )
    model = nn.Sequential(
        nn.BatchNorm2d(3),  # first layer: stays
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),  # folds
        nn.ReLU(),
        inner,
        nn.Conv2d(8, 8, 1),
        nn.BatchNorm2d(8, track_running_stats=False),  # batch statistics even in eval: stays
        nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2),
        normtut.BatchNorm2d(4),  # folds
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
        normtut.BatchNorm1d(10),  # folds
        nn.Tanh(),
        nn.Linear(10, 6),
        nn.BatchNorm1d(6),  # folds
    ).double()
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64)
    randomize_stats(model, x)
    folded = assert_folds(model, x, left=["0", "4.3", "6"])
    for i in ("2", "4.1", "8", "12", "15"):
        assert isinstance(folded.get_submodule(i), nn.Identity)
    # Every other state_dict key is where it was; the folded layers gained a bias.
    keys = set(folded.state_dict())
    moved = {"2.", "4.1.", "8.", "12.", "15."}
    assert {k for k in model.state_dict() if not any(k.startswith(p) for p in moved)} <= keys
    assert "4.0.bias" in keys


@pytest.mark.parametrize("norm2d,norm1d", [(nn.BatchNorm2d, nn.BatchNorm1d), (None, None)])
def test_lenet_folds_every_norm(norm2d, norm1d):
    from normtut.experiments.models import LeNet

    torch.manual_seed(0)
    model = LeNet("bn", in_size=8, activation=nn.ReLU, norm2d=norm2d, norm1d=norm1d).double()
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    randomize_stats(model, x)
    folded = assert_folds(model, x, left=[])
    assert type(folded) is type(model)


def test_float32_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), nn.ReLU(), nn.Conv1d(5, 2, 1))
    x = torch.randn(4, 3, 9)
    randomize_stats(model, x)
    assert_folds(model, x, left=[], rtol=1e-5, atol=1e-5)


def test_linear_and_one_feature_batchnorms():
    """BatchNorm1d(C) after Linear on (N, C); BatchNorm1d(1) / BatchNorm2d(1) after Linear on
    (N, 1, ...): folded. BatchNorm2d(C) after a Linear normalizes another axis: stays."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 4)),  # (N, 4) -> (N, 1, 4)
        nn.Linear(4, 4),
        nn.BatchNorm1d(1),  # one feature: folds
        nn.Unflatten(2, (2, 2)),  # (N, 1, 2, 2)
        nn.Linear(2, 2),
        nn.BatchNorm2d(1),  # one feature: folds
        nn.Flatten(),
        nn.Unflatten(1, (2, 2)),  # (N, 2, 2)
        nn.Linear(2, 2),
        nn.Unflatten(1, (2, 1)),  # (N, 2, 1, 2)
        nn.Linear(2, 2),
        nn.BatchNorm2d(2),  # normalizes axis 1, the Linear maps axis 3: stays
        nn.Flatten(),
        nn.Linear(4, 3),
        normtut.BatchNorm1d(3),  # (N, C): folds
    ).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    randomize_stats(model, x)
    assert_folds(model, x, left=["11"])


def test_shared_layers():
    """A layer used twice is replaced only where it is folded; a shared block is folded once."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
    block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3))
    model = nn.Sequential(
        conv, bn,  # conv folds here...
        nn.ReLU(),
        conv,  # ...and stays itself here
        nn.ReLU(),
        bn,  # the same BN after a ReLU: stays
        nn.Conv2d(3, 3, 1), bn,  # and after another conv: folds
        block, nn.ReLU(), block,  # the same block twice
    ).double()  # fmt: skip
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    randomize_stats(model, x)
    folded = assert_folds(model, x, left=["5"])
    assert torch.equal(folded[3].weight, conv.weight) and folded[3].bias is not None
    assert not torch.equal(folded[0].weight, conv.weight)
    assert folded[8] is folded[10] and isinstance(folded[8][1], nn.Identity)  # folded once


def test_what_is_left_alone():
    """Hooks, a Sequential subclass with its own forward, a custom module, a parametrized
    layer (torch's fuse raises a KeyError on it), a lazy layer."""
    torch.manual_seed(0)

    class Residual(nn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x)  # the conv's output feeds two places

    hooked = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    seen = []
    hooked[0].register_forward_hook(lambda m, a, out: seen.append(out))
    normed = nn.Sequential(weight_norm(nn.Conv2d(3, 3, 1)), nn.BatchNorm2d(3))
    model = nn.Sequential(
        Residual(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)), Block(), hooked, normed
    ).double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    randomize_stats(model, x)
    assert_folds(model, x, left=["0.1", "1.bn", "2.1", "3.1"])
    lazy = nn.Sequential(nn.LazyConv2d(3, 1), nn.BatchNorm2d(3))
    assert batchnorms(fusion.fold_batchnorm(lazy)) == ["1"]


def test_other_batchnorm_kinds():
    """Frozen and Sync BatchNorm fold; so does a BN whose track_running_stats was turned off
    after training (eval still uses its buffers)."""
    torch.manual_seed(0)
    flipped = nn.BatchNorm2d(4)
    frozen = normtut.FrozenBatchNorm2d(4)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), flipped, nn.ReLU(),
        nn.Conv2d(4, 4, 1), nn.SyncBatchNorm(4), nn.ReLU(),
        nn.Conv2d(4, 4, 1), frozen,
    ).double()  # fmt: skip
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    randomize_stats(model, x)
    with torch.no_grad():
        frozen.running_mean.uniform_(-1, 1), frozen.running_var.uniform_(0.5, 2)
        frozen.weight.uniform_(-2, 2), frozen.bias.normal_()
    flipped.track_running_stats = False
    assert_folds(model, x, left=[])


def test_model_without_sequential():
    torch.manual_seed(0)
    bn = trained(nn.BatchNorm2d(3), (4, 3, 2, 2)).train()
    folded = fusion.fold_batchnorm(bn)
    assert folded is not bn and not folded.training and bn.training
    assert batchnorms(folded) == [""]
