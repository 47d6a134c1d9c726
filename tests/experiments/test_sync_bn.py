"""Chapter 11's helpers: the two-process demonstration against BatchNorm, the wire, figures."""

from __future__ import annotations

import matplotlib
import pytest
import torch
import torch.distributed as dist
from torch import nn

from normtut import functional as F
from normtut.experiments import digits, distributed, sync_bn

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return distributed.launch(sync_bn.demo, 2, timeout=240)


def test_demo_is_batchnorm_on_all_eight_samples(ranks):
    x, dy = sync_bn.demo_batch()
    bn = nn.BatchNorm1d(2)
    xr = x.clone().requires_grad_()
    y = bn(xr)
    y.backward(dy)
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), xr.grad)
    torch.testing.assert_close(sum(r["dweight"] for r in ranks), bn.weight.grad)
    torch.testing.assert_close(sum(r["dbias"] for r in ranks), bn.bias.grad)
    for r in ranks:
        torch.testing.assert_close(r["running_var"], bn.running_var)
    counts = [r["moments"][0] for r in ranks]
    assert counts == list(sync_bn.DEMO_SIZES)
    merged = F.merge_moments(*[r["moments"] for r in ranks])
    mean, var = F.moments(x, (0,))
    torch.testing.assert_close(merged[1], mean)
    torch.testing.assert_close(merged[2] / 8, var)


def test_the_wire_carries_what_traffic_says(ranks):
    for r in ranks:
        assert r["wire"] == {"forward": [("all_gather", 5)], "backward": [("all_reduce", 4)]}
        rows = sync_bn.traffic(digits.lenet("bn", 0), ranks=2)
        forward = [("all_gather", row["sent"]) for row in rows]
        backward = [("all_reduce", row["all-reduced"]) for row in reversed(rows)]
        assert r["lenet_wire"] == forward + backward  # backward runs the layers in reverse
    assert [row["C"] for row in rows] == [6, 16, 120, 84]
    assert rows[0] == {"layer": "1", "C": 6, "sent": 13, "gathered": 26, "all-reduced": 12}


def test_wiretap_restores_torch_distributed():
    before = dist.all_gather, dist.all_reduce
    with pytest.raises(ValueError):  # no process group: the call fails, the tap comes off
        with sync_bn.wiretap() as calls:
            dist.all_reduce(torch.zeros(3))
    assert calls == [("all_reduce", 3)]
    assert (dist.all_gather, dist.all_reduce) == before


def test_figures():
    x, _ = sync_bn.demo_batch()
    fig = sync_bn.merge_figure([x[:3, 0], x[3:, 0]])
    (ax,) = fig.axes
    assert len(ax.collections) == 3  # rank 0, rank 1, all: a dot per value
    assert [len(c.get_offsets()) for c in ax.collections] == [3, 5, 8]
    assert any("averaged" in t.get_text() for t in ax.texts)
    fig = sync_bn.settings_figure({"a": [1.0, 2.0], "b": [50.0, 60.0, 70.0]})
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert list(ax.get_yticks()) == [1, 0]  # the first setting on top
    assert [p.get_width() for p in ax.patches] == [1.5, 60.0]


def test_my_slice():
    assert [sync_bn.my_slice(r, (3, 0, 5)) for r in range(3)] == [
        slice(0, 3),
        slice(3, 3),
        slice(3, 8),
    ]
