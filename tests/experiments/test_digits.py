"""The one digits split and the one training loop, against plain torch."""

from __future__ import annotations

import math

import pytest
import torch
from plain_torch import reference_training
from torch import nn

from normtut.experiments import digits


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits()


def test_the_split_is_fixed_and_disjoint(data):
    from sklearn.datasets import load_digits

    assert data.x_train.shape == (1440, 1, 8, 8) and data.x_test.shape == (357, 1, 8, 8)
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) == 1.0
    assert set(data.y_train.tolist()) == set(range(10)) == set(data.y_test.tolist())
    again = digits.load_digits()
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    # Every one of sklearn's 1797 images is in exactly one of the two sets.
    raw = torch.tensor(load_digits().images, dtype=torch.float32).flatten(1) / 16
    both = torch.cat([data.x_train, data.x_test]).flatten(1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, raw.tolist()))


@pytest.mark.parametrize(
    "optimizer, schedule, batch_size, drop_last",
    [("sgd", "cosine", 32, True), ("sgd", "constant", 100, True), ("adam", "constant", 100, False)],
)
def test_train_is_the_plain_torch_loop(data, optimizer, schedule, batch_size, drop_last):
    model = digits.lenet("bn", 3)
    ref = digits.lenet("bn", 3)
    seen = []
    losses = digits.train(
        model, data, epochs=2, batch_size=batch_size, lr=0.02, seed=5, optimizer=optimizer,
        schedule=schedule, drop_last=drop_last, after_step=lambda step, loss: seen.append((step, loss)),
    )  # fmt: skip
    opt_class = {
        "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, fused=True),
        "adam": torch.optim.Adam,
    }[optimizer]
    expected = reference_training(
        ref, data, 2, batch_size, 0.02, 5, opt_class, schedule == "cosine", drop_last
    )
    assert losses == expected
    assert seen == list(enumerate(expected, start=1))
    assert len(losses) == 2 * (1440 // batch_size if drop_last else math.ceil(1440 / batch_size))
    for (k, x), y in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def test_aten_convolutions_restores_the_setting_even_after_an_error():
    assert torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError, match="inside"):
        with digits.aten_convolutions():
            assert not torch.backends.mkldnn.enabled
            raise RuntimeError("inside")
    assert torch.backends.mkldnn.enabled


def test_a_diverged_loss_ends_training(data):
    model = digits.lenet("none", 0)
    losses = digits.train(model, data, epochs=3, batch_size=32, lr=1e6, seed=0)
    assert not math.isfinite(losses[-1]) and all(math.isfinite(v) for v in losses[:-1])
    assert len(losses) < 3 * 45


def test_train_keeps_the_thread_count_and_onednn_setting_and_checks_its_options(data):
    torch.set_num_threads(2)
    try:
        seen = []
        digits.train(
            digits.lenet("gn", 0), data, epochs=1, batch_size=720, lr=0.1, seed=0,
            after_step=lambda step, loss: seen.append(torch.backends.mkldnn.enabled),
        )  # fmt: skip
        assert seen == [False, False]  # off while training
        assert torch.get_num_threads() == 2 and torch.backends.mkldnn.enabled
    finally:
        torch.set_num_threads(1)
    model = digits.lenet("gn", 0)
    with pytest.raises(ValueError, match="batch_size must be between 1 and 1440, got 2000"):
        digits.train(model, data, epochs=1, batch_size=2000, lr=0.1, seed=0)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        digits.train(model, data, epochs=1, batch_size=32, lr=0.1, seed=0, optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        digits.train(model, data, epochs=1, batch_size=32, lr=0.1, seed=0, schedule="step")


def test_error_is_the_eval_mode_error_and_restores_the_mode(data):
    model = digits.lenet("bn", 0, norm2d=nn.BatchNorm2d, norm1d=nn.BatchNorm1d).train()
    with torch.no_grad():
        model(data.x_train[:64])  # running statistics off their start
        expected = (model.eval()(data.x_test).argmax(1) != data.y_test).double().mean() * 100
    model.train()
    assert digits.error(model, data.x_test, data.y_test) == expected.item()
    assert model.training
