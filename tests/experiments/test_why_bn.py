"""The why-BatchNorm experiment: variants, runs, the sweep's table and figure, the Wobble layer."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch
from torch import nn

from normtut import BatchNorm1d, BatchNorm2d
from normtut.experiments import digits, why_bn

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits()


def test_variants_differ_only_in_their_norm_slots():
    none, bn, noisy = (why_bn.lenet(v, 0) for v in why_bn.VARIANTS)
    assert [type(none[i]) for i in (1, 5, 10, 13)] == [nn.Identity] * 4
    assert [type(bn[i]) for i in (1, 5, 10, 13)] == [
        BatchNorm2d,
        BatchNorm2d,
        BatchNorm1d,
        BatchNorm1d,
    ]
    assert isinstance(noisy[10][0], BatchNorm1d) and isinstance(noisy[10][1], why_bn.Wobble)
    # The same weights for the same seed, whatever the norm.
    assert torch.equal(none[0].weight, bn[0].weight) and torch.equal(bn[9].weight, noisy[9].weight)
    dropped = why_bn.lenet("bn", 0, dropout=0.2)
    assert isinstance(dropped[11][1], nn.Dropout) and dropped[11][1].p == 0.2
    with pytest.raises(ValueError, match="unknown variant 'gn'"):
        why_bn.lenet("gn", 0)


def test_wobble_shifts_and_scales_each_unit_in_training_only():
    w = why_bn.Wobble(3, max_shift=0.5, max_scale=1.5)
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(w(x), x)  # starts as the identity
    w.redraw(torch.Generator().manual_seed(0))
    assert (w.shift.abs() <= 0.5).all() and ((w.scale >= 1 / 1.5) & (w.scale <= 1.5)).all()
    expected = x * w.scale.view(1, 3, 1, 1) + w.shift.view(1, 3, 1, 1)
    torch.testing.assert_close(w(x), expected)
    torch.testing.assert_close(w(x[:, :, 0, 0]), expected[:, :, 0, 0])  # (N, C) input
    assert torch.equal(w.eval()(x), x)
    before = w.shift.clone()
    w.redraw(torch.Generator().manual_seed(1))
    assert not torch.equal(before, w.shift)


def test_a_run_is_the_digits_loop_and_its_errors(data):
    run = why_bn.train_run("bn", 0.1, 0, data, epochs=1)
    model = why_bn.lenet("bn", 0)
    losses = digits.train(model, data, epochs=1, batch_size=32, lr=0.1, seed=0)
    assert run.losses == losses and run.steps_per_epoch == 45
    assert run.final_loss == pytest.approx(sum(losses) / 45)
    assert run.test_error == digits.error(model, data.x_test, data.y_test)
    assert run.train_error == digits.error(model, data.x_train, data.y_train)


def test_noisy_runs_are_deterministic_and_redraw_every_step(data):
    seen = []
    a = why_bn.train_run("noisy bn", 0.1, 3, data, epochs=1, watch=lambda m: _shift_log(m, seen))
    b = why_bn.train_run("noisy bn", 0.1, 3, data, epochs=1)
    assert a.losses == b.losses
    assert len(seen) == 45 and len({s for s in seen}) == 45  # a new shift at every step
    assert a.losses != why_bn.train_run("bn", 0.1, 3, data, epochs=1).losses


def _shift_log(model, seen):
    wobble = next(m for m in model.modules() if isinstance(m, why_bn.Wobble))
    return lambda step, loss: seen.append(tuple(wobble.shift.tolist()))


def test_a_diverged_run_has_no_errors(data):
    run = why_bn.train_run("none", 1e6, 0, data, epochs=1)
    assert math.isinf(run.final_loss) and math.isnan(run.test_error)


def test_sweep_table_and_plot(data):
    runs = why_bn.lr_sweep(("none", "bn"), (0.05, 0.2), (0,), data=data, epochs=1)
    assert [(r.variant, r.lr) for r in runs] == [
        ("none", 0.05),
        ("none", 0.2),
        ("bn", 0.05),
        ("bn", 0.2),
    ]
    table = why_bn.sweep_table(runs)
    bn_005 = next(r for r in runs if r.variant == "bn" and r.lr == 0.05)
    row = next(line for line in table.splitlines() if line.startswith("0.05 "))
    assert f"{bn_005.final_loss:.3f} / {bn_005.test_error:5.1f}" in row
    fig = why_bn.plot_losses(runs)
    assert len(fig.axes) == 2 and all(len(ax.lines) == 3 for ax in fig.axes)  # 2 lrs + chance
    assert fig.axes[0].get_yscale() == "log"


def test_mean_over_seeds():
    runs = [why_bn.Run("bn", 0.1, s, [1.0], 1, 0.0, e) for s, e in [(0, 2.0), (1, 4.0)]]
    assert why_bn.mean_over_seeds(runs, "test_error") == {("bn", 0.1): 3.0}


def test_smooth_is_a_moving_average():
    x = [1.0, 3.0, 5.0, 7.0, math.nan]
    torch.testing.assert_close(
        why_bn.smooth(x, width=2), torch.tensor([1.0, 2.0, 4.0, 6.0, math.inf], dtype=torch.float64)
    )


def test_watched_run_snapshots_the_chosen_points(data):
    points = {"fc1 output": (9, "output"), "ReLU input": (11, "input")}
    run, snaps = why_bn.watched_run("bn", 0.1, 0, data, points)
    assert snaps.steps == list(range(0, 6 * 45 + 1, 5))
    values = snaps.stacked()
    assert values["fc1 output"].shape == (len(snaps.steps), 256, 120)
    assert run.losses == why_bn.train_run("bn", 0.1, 0, data).losses  # watching changes nothing
