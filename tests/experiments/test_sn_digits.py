"""The digits experiment of the Switchable Normalization chapter: it runs, and the mixtures move."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from normtut import SwitchableNorm2d
from normtut.experiments.sn_digits import (
    digits_convnet,
    load_digits_tensors,
    plot_mixtures,
    train_switchable_digits,
)


def test_digits_data():
    x_train, y_train, x_test, y_test = load_digits_tensors()
    assert x_train.shape == (1500, 1, 8, 8) and x_test.shape == (297, 1, 8, 8)
    assert 0.0 <= float(x_train.min()) and float(x_train.max()) <= 1.0
    assert set(y_test.tolist()) <= set(range(10)) and len(y_train) == 1500


def test_convnet_has_two_sn_layers():
    model = digits_convnet(SwitchableNorm2d)
    assert sum(isinstance(m, SwitchableNorm2d) for m in model.modules()) == 2
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_digits_demo_moves_the_mixture():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the notebook; a tiny net is slower on more threads
    try:
        _, history = train_switchable_digits(epochs=1)
    finally:
        torch.set_num_threads(threads)
    mixtures = history["mixtures"]
    assert mixtures.shape == (1 + math.ceil(1500 / 32), 2, 2, 3)
    torch.testing.assert_close(mixtures[0], torch.full((2, 2, 3), 1 / 3))
    fig = plot_mixtures(mixtures, steps_per_epoch=47)
    assert len(fig.axes) == 4
    plt.close(fig)
    torch.testing.assert_close(mixtures.sum(-1), torch.ones(mixtures.shape[:-1]))
    assert (mixtures[-1] - 1 / 3).abs().max() > 0.05
    assert len(history["loss"]) == 1 and len(history["test_accuracy"]) == 2
    assert history["test_accuracy"][1] > history["test_accuracy"][0]
