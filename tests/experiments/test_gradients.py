"""Per-layer gradient norms at initialization, against autograd on torch's own layers."""

from __future__ import annotations

import matplotlib
import torch
from torch import nn

from normtut import BatchNorm1d
from normtut.experiments import gradients

matplotlib.use("Agg")


def test_deep_mlp_layout():
    model = gradients.deep_mlp(3, batchnorm=True, width=8)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Flatten] + [nn.Linear, BatchNorm1d, nn.ReLU] * 3 + [nn.Linear]
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    plain = gradients.deep_mlp(3, batchnorm=False, width=8)
    assert torch.equal(plain[1].weight, model[1].weight)  # same seed, same weights


def test_weight_gradient_norms_against_torch():
    model = gradients.deep_mlp(2, batchnorm=True, width=8, activation=nn.Tanh)
    twin = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Tanh(),
        nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 10),
    )  # fmt: skip
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    norms = gradients.weight_gradient_norms(model, x, y)
    nn.functional.cross_entropy(twin(x), y).backward()
    expected = [twin[i].weight.grad.norm().item() for i in (1, 4, 7)]
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(expected))
    again = gradients.weight_gradient_norms(model, x, y)  # zeroed first, not accumulated
    assert again == norms


def test_plot_gradient_norms():
    fig = gradients.plot_gradient_norms({"a": [1.0, 0.1, 0.01], "b": [1.0, 10.0, 100.0]}, "t")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and [len(line.get_xdata()) for line in ax.lines] == [3, 3]
