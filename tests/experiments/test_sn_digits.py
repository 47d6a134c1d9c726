"""The digits experiment of the Switchable Normalization chapter: it runs, and the mixtures move."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from normtut import SwitchableNorm2d
from normtut.experiments import digits
from normtut.experiments.sn_digits import (
    digits_convnet,
    plot_mixtures,
    sn_mixtures,
    train_switchable_digits,
)


def test_convnet_has_two_sn_layers():
    model = digits_convnet(SwitchableNorm2d)
    assert sum(isinstance(m, SwitchableNorm2d) for m in model.modules()) == 2
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_digits_demo_moves_the_mixture():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the notebook; a tiny net is slower on more threads
    try:
        model, history = train_switchable_digits(epochs=1)
    finally:
        torch.set_num_threads(threads)
    mixtures = history["mixtures"]
    assert mixtures.shape == (1 + math.ceil(1440 / 32), 2, 2, 3)  # digits.load_digits' split
    torch.testing.assert_close(mixtures[0], torch.full((2, 2, 3), 1 / 3))
    torch.testing.assert_close(mixtures[-1], sn_mixtures(model))
    fig = plot_mixtures(mixtures, steps_per_epoch=45)
    assert len(fig.axes) == 4
    plt.close(fig)
    torch.testing.assert_close(mixtures.sum(-1), torch.ones(mixtures.shape[:-1]))
    assert (mixtures[-1] - 1 / 3).abs().max() > 0.05
    assert len(history["loss"]) == 1 and len(history["test_accuracy"]) == 2
    assert history["test_accuracy"][1] > history["test_accuracy"][0]
    data = digits.load_digits()
    assert history["test_accuracy"][1] == 1 - digits.error(model, data.x_test, data.y_test) / 100
