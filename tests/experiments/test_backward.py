"""normtut.experiments.backward: the chapter's Jacobians (against torch and the formula),
the graph figure and the benchmark table."""

import csv

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from normtut.experiments import backward as B


def test_training_jacobian_is_the_formula_and_torchs():
    """dy_i/dx_j = r (delta_ij - 1/n - x_hat_i x_hat_j / n) for one BatchNorm channel."""
    n = 6
    jac = B.batchnorm_jacobian(n, train=True, seed=3)
    x = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref = torch.autograd.functional.jacobian(nn.BatchNorm1d(1).double(), x)[:, 0, :, 0]
    torch.testing.assert_close(jac, ref)
    var, mean = torch.var_mean(x[:, 0], correction=0)
    r = 1 / torch.sqrt(var + 1e-5)
    x_hat = (x[:, 0] - mean) * r
    formula = r * (torch.eye(n, dtype=torch.float64) - 1 / n - torch.outer(x_hat, x_hat) / n)
    torch.testing.assert_close(jac, formula)
    torch.testing.assert_close(jac.sum(0), torch.zeros(n, dtype=torch.float64))  # sums to 0


def test_eval_jacobian_is_diagonal():
    jac = B.batchnorm_jacobian(5, train=False)
    expected = torch.eye(5, dtype=torch.float64) / torch.sqrt(torch.tensor(1.5 + 1e-5))
    torch.testing.assert_close(jac, expected.double())


def test_figures_draw():
    for fig in (B.forward_graph(), B.coupling(n=4)):
        assert isinstance(fig, Figure)
        plt.close(fig)
    texts = [t.get_text() for t in B.forward_graph().axes[0].texts]
    assert sum("sum" == t for t in texts) == 2 and any("hat x" in t for t in texts)
    plt.close("all")


@pytest.fixture
def results(tmp_path):
    fields = ["layer", "shape", "target", "normtut_fwd", "normtut_fwdbwd", "compiled_fwdbwd",
              "saved_normtut", "saved_torch", "peak_normtut", "peak_torch"]  # fmt: skip
    rows = [
        ["BN", "2x3", 2.0, 1.0, 2.0, 0.5, 1.0, 1.0, 4.0, 2.0],
        ["BN", "4x3", 2.0, 3.0, 4.0, 1.5, 1.0, 1.0, 4.0, 2.0],
        ["LN", "2x3", 2.5, 2.0, 3.0, "nan", 1.1, 1.2, 6.0, 2.0],
    ]
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        writer.writerows(rows)
    return B.read_bench(path)


def test_bench_table_gives_medians_per_layer(results):
    lines = B.bench_table(results).splitlines()
    assert len(lines) == 3
    assert lines[1].split()[:4] == ["BN", "2.00", "3.00", "1.00"]
    assert lines[2].split()[:4] == ["LN", "2.00", "3.00", "n/a"]
    fig = B.bench_chart(results)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["BN", "LN"]
    plt.close(fig)


def test_saved_bytes_counts_each_storage_once():
    x = torch.randn(4, 3, 5, requires_grad=True)
    layer = nn.BatchNorm1d(3)
    kept = B.saved_bytes(lambda: layer(x))
    assert kept >= x.numel() * 4  # torch keeps the input
    assert B.saved_bytes(lambda: x * x) == x.numel() * 4  # x twice, one storage
