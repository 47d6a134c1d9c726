"""Each bug of seed 002's from-scratch batch norm (normtut.experiments.d2l) has its documented consequence.

The expected values come from torch: nn.BatchNorm1d/2d, F.batch_norm and torch.var_mean.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normtut
from normtut.experiments import d2l


def _layer(num_features: int, num_dims: int) -> d2l.BatchNorm:
    return d2l.BatchNorm(num_features, num_dims, fix_beta_typo=True)


def _stats(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and biased variance over axis 0, from torch."""
    var, mean = torch.var_mean(X, dim=0, correction=0)
    return mean, var


def test_as_written_the_class_cannot_be_built():
    with pytest.raises(AttributeError, match="beta"):
        d2l.BatchNorm(6, num_dims=4)


def test_the_flag_repairs_only_construction():
    bn, ref = _layer(5, 4), nn.BatchNorm2d(5)
    assert [name for name, _ in bn.named_parameters()] == ["gamma", "beta"]
    torch.testing.assert_close(bn.gamma.flatten(), ref.weight.detach())
    torch.testing.assert_close(bn.beta.flatten(), ref.bias.detach())
    assert bn.moving_var.abs().sum() == 0  # still the zero start


def test_training_output_on_2d_input_is_right():
    # What the code gets right: a training step on (N, F) is batch norm over N.
    torch.manual_seed(0)
    X = torch.randn(8, 5) * 3 + 1
    torch.testing.assert_close(_layer(5, 2)(X), nn.BatchNorm1d(5)(X))


def test_swapped_arguments_mix_mean_and_variance():
    torch.manual_seed(1)
    X1, X2 = torch.randn(16, 4) + 2, torch.randn(16, 4) * 2 + 5
    bn = _layer(4, 2)
    m1, v1 = _stats(X1)
    m2, v2 = _stats(X2)
    bn(X1)  # both start at 0, so the first step cannot show the swap
    torch.testing.assert_close(bn.moving_mean.flatten(), 0.1 * m1)
    torch.testing.assert_close(bn.moving_var.flatten(), 0.1 * v1)
    bn(X2)  # each one now continues from the other's old value
    torch.testing.assert_close(bn.moving_mean.flatten(), 0.9 * 0.1 * v1 + 0.1 * m2)
    torch.testing.assert_close(bn.moving_var.flatten(), 0.9 * 0.1 * m1 + 0.1 * v2)
    ref = nn.BatchNorm1d(4)
    ref(X1), ref(X2)
    assert not torch.allclose(bn.moving_mean.flatten(), ref.running_mean, atol=1e-2)


def test_swapped_arguments_in_eval_swap_the_statistics_on_every_call():
    torch.manual_seed(2)
    X = torch.randn(16, 3) + 3
    bn = _layer(3, 2)
    bn(X), bn(X)
    bn.eval()
    mean, var = bn.moving_mean.clone(), bn.moving_var.clone()
    y1 = bn(X)
    # it normalized with the variance as the mean and the mean as the variance ...
    expected = F.batch_norm(X, var.flatten(), mean.flatten(), training=False)
    torch.testing.assert_close(y1, expected)
    # ... and stored them back exchanged, so the next call gives another answer
    torch.testing.assert_close(bn.moving_mean, var)
    torch.testing.assert_close(bn.moving_var, mean)
    y2, y3 = bn(X), bn(X)
    assert not torch.allclose(y1, y2, atol=1e-3)
    torch.testing.assert_close(y1, y3)


def test_4d_input_takes_the_fully_connected_branch():
    torch.manual_seed(3)
    N, C, H, W = 8, 3, 4, 5
    X = torch.randn(N, C, H, W) * 2 + torch.arange(H * W, dtype=torch.float32).reshape(1, 1, H, W)
    bn = _layer(C, 4)
    Y = bn(X)
    assert bn.moving_mean.shape == (1, C, H, W)  # one statistic per (c, h, w) position
    assert bn.moving_var.shape == (1, C, H, W)
    # The output is BatchNorm1d over C*H*W features of the flattened input ...
    flat = nn.BatchNorm1d(C * H * W)(X.flatten(1)).reshape(N, C, H, W)
    torch.testing.assert_close(Y, flat)
    # ... which is not BatchNorm2d.
    assert (Y - nn.BatchNorm2d(C)(X)).abs().max() > 0.5


def test_4d_statistics_pin_the_spatial_size():
    bn = _layer(3, 4)
    bn(torch.randn(4, 3, 6, 6))
    bn.eval()
    with pytest.raises(RuntimeError, match="must match"):
        bn(torch.randn(4, 3, 7, 7))
    nn.BatchNorm2d(3).eval()(torch.randn(4, 3, 7, 7))  # torch's has no such limit


def test_zero_moving_var_blows_up_eval_before_training():
    torch.manual_seed(4)
    X = torch.randn(6, 3, 4, 4)
    bn = _layer(3, 4).eval()
    zeros = torch.zeros(3)
    torch.testing.assert_close(bn(X), F.batch_norm(X, zeros, zeros, training=False, eps=1e-5))
    ref = nn.BatchNorm2d(3).eval()(X)  # running_var starts at 1: close to the identity
    torch.testing.assert_close(ref, X, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bn(X), X / 1e-5**0.5)  # about 316 times the input


@pytest.mark.parametrize("n", [2, 4, 32])
def test_running_variance_is_biased(n):
    torch.manual_seed(5)
    X = torch.randn(n, 6) * 3
    # The function with correct argument order and torch's start values (0, 1).
    _, mean, var = d2l.batch_norm(True, X, 1.0, 0.0, torch.zeros(6), torch.ones(6), 1e-5, 0.9)
    ref = nn.BatchNorm1d(6, momentum=0.1)
    ref(X)
    torch.testing.assert_close(mean, ref.running_mean)
    assert not torch.allclose(var, ref.running_var)
    # var - 0.9 = 0.1 * biased = 0.1 * unbiased * (n - 1) / n
    torch.testing.assert_close(var - 0.9, (ref.running_var - 0.9) * (n - 1) / n)


@pytest.mark.parametrize("momentum", [0.9, 0.99, 0.7])
def test_keras_momentum_is_one_minus_torch_momentum(momentum):
    torch.manual_seed(6)
    X = torch.randn(10, 4) + 2
    _, mean, _ = d2l.batch_norm(True, X, 1.0, 0.0, torch.zeros(4), torch.ones(4), 1e-5, momentum)
    ported = nn.BatchNorm1d(4, momentum=1 - momentum)
    ported(X)
    torch.testing.assert_close(mean, ported.running_mean)
    literal = nn.BatchNorm1d(4, momentum=momentum)  # the trap: copying the number across
    literal(X)
    assert not torch.allclose(mean, literal.running_mean, atol=1e-2)


def test_statistics_are_not_in_state_dict():
    bn, ref = _layer(3, 4), nn.BatchNorm2d(3)
    assert set(bn.state_dict()) == {"gamma", "beta"}
    assert list(bn.buffers()) == []
    assert {"running_mean", "running_var", "num_batches_tracked"} <= set(ref.state_dict())


def test_statistics_are_lost_through_state_dict():
    torch.manual_seed(7)
    X = torch.randn(8, 3) + 4
    trained, ref = _layer(3, 2), nn.BatchNorm1d(3)
    for _ in range(3):
        trained(X), ref(X)
    restored, ref_restored = _layer(3, 2), nn.BatchNorm1d(3)
    restored.load_state_dict(trained.state_dict())
    ref_restored.load_state_dict(ref.state_dict())
    for m in (trained, restored, ref, ref_restored):
        m.eval()
    torch.testing.assert_close(ref_restored(X), ref(X))
    assert not torch.allclose(restored(X), trained(X), atol=1e-2)


def test_statistics_ignore_dtype_conversion():
    bn, ref = _layer(3, 4).to(torch.float64), nn.BatchNorm2d(3).to(torch.float64)
    assert bn.gamma.dtype == torch.float64 and ref.running_mean.dtype == torch.float64
    assert bn.moving_mean.dtype == torch.float32 and bn.moving_var.dtype == torch.float32
    X = torch.randn(4, 3, 2, 2).half()
    half, ref_half = _layer(3, 4).half().eval(), nn.BatchNorm2d(3).half().eval()
    assert ref_half(X).dtype == torch.float16
    assert half(X).dtype == torch.float32  # the float32 statistics promote the output


def test_normtut_matches_torch_where_the_specimen_does_not():
    torch.manual_seed(8)
    batches = [torch.randn(8, 3, 5, 5) * (i + 1) + i for i in range(3)]
    ours, ref, specimen = normtut.BatchNorm2d(3), nn.BatchNorm2d(3), _layer(3, 4)
    for X in batches:
        torch.testing.assert_close(ours(X), ref(X))
        specimen(X)
    for m in (ours, ref, specimen):
        m.eval()
    torch.testing.assert_close(ours(batches[0]), ref(batches[0]))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert (specimen(batches[0]) - ref(batches[0])).abs().max() > 0.1


def test_seed_lenet_with_the_specimen():
    from normtut.experiments.models import LeNet

    with pytest.raises(AttributeError, match="beta"):
        LeNet(norm2d=lambda C: d2l.BatchNorm(C, 4), norm1d=lambda C: d2l.BatchNorm(C, 2))
    scratch = LeNet(norm2d=lambda C: _layer(C, 4), norm1d=lambda C: _layer(C, 2))
    concise = LeNet(norm2d=nn.BatchNorm2d, norm1d=nn.BatchNorm1d)
    images = torch.randn(4, 1, 28, 28)
    assert scratch(images).shape == concise(images).shape == (4, 10)
    # per-position statistics after the convolutions, one per channel in torch's
    assert scratch[1].moving_mean.shape == (1, 6, 24, 24) and concise[1].running_mean.shape == (6,)
    assert scratch[5].moving_mean.shape == (1, 16, 8, 8) and concise[5].running_mean.shape == (16,)
    assert not any("moving" in k or "running" in k for k in scratch.state_dict())
    assert sum("running" in k for k in concise.state_dict()) == 8
