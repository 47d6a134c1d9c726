"""normtut.experiments.inference: the folded-filter figure, rounding of folded models, and the
mode/context table, each checked against torch."""

import matplotlib

matplotlib.use("Agg")

import copy

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import normtut
from normtut.experiments.inference import (
    CONTEXTS,
    channel_scale,
    folded_filters,
    rounding_errors,
    switches,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_bn(affine: bool = True) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, affine=affine)
    with torch.no_grad():
        bn(torch.randn(8, 4, 5, 5) * 3 + 1)
        if affine:
            bn.weight.uniform_(-2, 2)
    return conv.eval(), bn.eval()


@pytest.mark.parametrize("affine", [True, False])
def test_channel_scale_is_what_folding_multiplies_by(affine):
    conv, bn = conv_bn(affine)
    ratio = fuse_conv_bn_eval(conv, bn).weight / conv.weight  # torch's fold
    torch.testing.assert_close(ratio, channel_scale(bn).reshape(-1, 1, 1, 1).expand_as(ratio))


def test_folded_filters_shows_both_rows_on_one_scale():
    conv, bn = conv_bn()
    fig = folded_filters(conv, bn, in_channel=1)
    assert isinstance(fig, Figure)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 8  # 2 rows x 4 channels
    fused = fuse_conv_bn_eval(conv, bn).weight[:, 1].detach().numpy()
    for c in range(4):
        np.testing.assert_allclose(images[c].get_array(), conv.weight[c, 1].detach().numpy())
        np.testing.assert_allclose(images[4 + c].get_array(), fused[c], rtol=1e-6)
    assert len({im.get_clim() for im in images}) == 1
    plt.close(fig)


def test_rounding_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    x = torch.randn(6, 1, 4, 4)
    with torch.no_grad():
        model(x * 2 + 1)  # training mode: running statistics move
    state = copy.deepcopy(model.state_dict())
    exact = rounding_errors(model, x, torch.float64)
    assert set(exact) == {"not folded", "folded, then cast", "cast, then folded"}
    # In float64 only the variant folded in the model's float32 carries float32 rounding.
    assert exact["not folded"]["max_abs_error"] < 1e-12
    assert exact["cast, then folded"]["max_abs_error"] < 1e-12
    assert 1e-12 < exact["folded, then cast"]["max_abs_error"] < 1e-5
    rows = rounding_errors(model, x, torch.float32)
    assert all(0 < r["mean_abs_error"] <= r["max_abs_error"] < 1e-4 for r in rows.values())
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_switches_match_torch():
    x = torch.randn(6, 3) * 2 + 1
    ours = switches(lambda: normtut.BatchNorm1d(3), x)
    theirs = switches(lambda: nn.BatchNorm1d(3), x)
    assert ours == theirs and len(ours) == 2 * len(CONTEXTS)
    by = {(r["mode"], r["context"]): r for r in theirs}
    # Only eval() changes the statistics; only the contexts stop the graph.
    assert by["train", "no_grad()"]["statistics"] == "batch"
    assert by["train", "inference_mode()"]["buffers move"]
    assert not by["eval", "(none)"]["buffers move"] and by["eval", "(none)"]["graph"]
    assert by["eval", "inference_mode()"]["version"] is None
