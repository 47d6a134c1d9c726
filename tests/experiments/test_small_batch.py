"""The small-batch experiment: its command line, its CSV, determinism, evaluation, and the effect itself."""

from __future__ import annotations

import copy
import csv
import functools
import itertools
import os
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from plain_torch import reference_training
from torch import nn

from normtut.experiments import digits
from normtut.experiments import small_batch as sb
from normtut.experiments.__main__ import main
from normtut.experiments.models import NORM_SLOTS, SwitchableNorm1d

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def data() -> digits.Digits:
    return digits.load_digits()


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["norm", "batch_size", "seed", "test_error"]
        return list(reader)


def test_cli_writes_a_well_formed_csv_and_table(tmp_path, capsys, data):
    out = tmp_path / "results.csv"
    args = [
        "small-batch",
        "--norms",
        "bn",
        "gn",
        "--batch-sizes",
        "16",
        "32",
        "--seeds",
        "0",
        "1",
        "--epochs",
        "1",
    ]
    assert main([*args, "--jobs", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # stderr is not a terminal here: no progress bar
    rows = read_csv(out)
    keys = [(r["norm"], int(r["batch_size"]), int(r["seed"])) for r in rows]
    assert keys == list(itertools.product(["bn", "gn"], [16, 32], [0, 1]))
    for r in rows:
        error = float(r["test_error"])
        wrong = error / 100 * len(data.y_test)
        assert (
            0 <= error <= 100 and abs(wrong - round(wrong)) < 1e-3
        )  # a whole number of the 357 test images
    # The table's cells are the mean and sample sd of the CSV's errors.
    lines = captured.out.splitlines()
    header = next(line for line in lines if line.startswith("norm "))
    assert header.split() == ["norm", "B=16", "B=32"]
    for norm in ("bn", "gn"):
        cells = next(line for line in lines if line.startswith(norm + " ")).split()[1:]
        for b, cell in zip((16, 32), (cells[0:3], cells[3:6]), strict=True):
            errors = [
                float(r["test_error"])
                for r in rows
                if r["norm"] == norm and int(r["batch_size"]) == b
            ]
            assert cell == [
                f"{statistics.mean(errors):.1f}",
                "±",
                f"{statistics.stdev(errors):.1f}",
            ]
    assert f"wrote {out}" in captured.out


def test_cli_as_a_new_user_runs_it(tmp_path, data):
    """``python -m normtut.experiments`` in a fresh process: clean stderr, and the same numbers as in-process."""
    out = tmp_path / "r.csv"
    cmd = [
        sys.executable,
        "-m",
        "normtut.experiments",
        "small-batch",
        "--norms",
        "ln",
        "--batch-sizes",
        "32",
    ]
    proc = subprocess.run(
        [*cmd, "--seeds", "3", "--epochs", "2", "--out", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "test error (%)" in proc.stdout
    (row,) = read_csv(out)
    model = sb.train_model("ln", 32, 3, data, epochs=2)
    assert row["test_error"] == f"{sb.evaluate(model, data.x_test, data.y_test):.4f}"


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["small-batch", "--norms", "batchnorm"])
    with pytest.raises(SystemExit, match="at least 2"):
        main(["small-batch", "--batch-sizes", "1", "4"])
    with pytest.raises(SystemExit, match="at least 1"):
        main(["small-batch", "--epochs", "0"])
    with pytest.raises(SystemExit, match="between 2 and 1440, got 5000"):
        main(["small-batch", "--batch-sizes", "5000", "--no-progress"])
    with pytest.raises(SystemExit):
        main([])  # no experiment named
    capsys.readouterr()


def test_progress_bar_goes_to_stderr_and_can_be_switched_off(monkeypatch, capsys):
    args = ["small-batch", "--norms", "gn", "--batch-sizes", "32", "--seeds", "0", "--epochs", "1"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # as in a terminal
    main(args)
    captured = capsys.readouterr()
    assert "step" in captured.err and "step" not in captured.out
    main([*args, "--no-progress"])
    assert capsys.readouterr().err == ""


def test_a_run_is_deterministic_and_keeps_the_thread_count(data):
    torch.set_num_threads(2)
    try:
        a = sb.train_model("bn", 16, 5, data, epochs=1)
        assert torch.get_num_threads() == 2  # one thread while training, then restored
        b = sb.train_model("bn", 16, 5, data, epochs=1)
        c = sb.train_model("bn", 16, 6, data, epochs=1)
    finally:
        torch.set_num_threads(1)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    assert not torch.equal(a[0].weight, c[0].weight)


def test_learning_rate_is_scaled_linearly_and_annealed(data):
    """lr = base_lr * B / 32, then a cosine down to 0: after one epoch of T steps the lr is 0 (torch's scheduler)."""
    seen = []
    model = sb.train_model(
        "gn", 8, 0, data, epochs=1, base_lr=0.4, after_step=lambda step, loss: seen.append(step)
    )
    assert seen == list(range(1, 1440 // 8 + 1))
    ref = digits.lenet("gn", 0)
    sgd = functools.partial(torch.optim.SGD, momentum=0.9, fused=True)
    reference_training(ref, data, 1, 8, 0.4 * 8 / 32, 0, sgd, cosine=True, drop_last=True)
    for (k, x), y in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=k)


def test_evaluate_against_plain_torch(data):
    torch.manual_seed(0)
    model = digits.lenet(
        "bn", 0, norm2d=nn.BatchNorm2d, norm1d=nn.BatchNorm1d
    )  # torch's own layers
    model.train()
    for xb in data.x_train[:64].split(8):  # move the running statistics off their start
        model(xb)
    before = copy.deepcopy(model.state_dict())
    x, y = data.x_test[:101], data.y_test[:101]
    with torch.no_grad():
        expected_eval = (model.eval()(x).argmax(1) != y).double().mean().item() * 100
        ref = copy.deepcopy(model).train()
        logits = torch.cat([ref(xb) for xb in x[:100].split(4)])
        expected_batch = (logits.argmax(1) != y[:100]).double().mean().item() * 100
    assert sb.evaluate(model, x, y) == expected_eval
    assert sb.evaluate(model, x, y, batch_stats=NORM_SLOTS, batch_size=4) == expected_batch
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # evaluate changed nothing
    with pytest.raises(ValueError, match="no batch"):
        sb.evaluate(model, x[:1], y[:1], batch_stats=["1"])


def test_set_momentum(data):
    model = digits.lenet("bn", 0)
    sb.set_momentum(model, None)
    assert [model[int(n)].momentum for n in NORM_SLOTS] == [None] * 4
    sn = digits.lenet("sn", 0)
    assert isinstance(sn[10], SwitchableNorm1d)
    sb.set_momentum(sn, 0.01)
    assert sn[10].momentum == 0.01 and sn[1].momentum == 0.01
    with pytest.raises(ValueError, match="BatchNorm's"):
        sb.set_momentum(sn, None)
    with pytest.raises(ValueError, match="batch_size must be between 2"):
        sb.train_model("bn", 1, 0, data)


def test_table_csv_and_plot_from_given_results(tmp_path):
    results = [
        sb.Result("bn", b, s, e)
        for b, s, e in [(2, 0, 50.0), (2, 1, 60.0), (32, 0, 2.0), (32, 1, 3.0)]
    ]
    results.append(sb.Result("gn", 2, 0, 4.0))
    table = sb.results_table(results)
    assert "55.0 ± 7.1" in table and "2.5 ± 0.7" in table  # mean, sample sd of (50, 60) and (2, 3)
    gn_row = next(line for line in table.splitlines() if line.startswith("gn"))
    assert gn_row.split() == ["gn", "4.0", "±", "0.0", "-"]  # one seed, no B=32 run
    sb.write_csv(results, tmp_path / "r.csv")
    assert [r["test_error"] for r in read_csv(tmp_path / "r.csv")] == [
        "50.0000",
        "60.0000",
        "2.0000",
        "3.0000",
        "4.0000",
    ]
    fig = sb.plot(results)
    ours, paper = fig.axes
    assert [len(line.get_xdata()) for line in ours.lines] == [2, 1]
    assert [list(line.get_ydata()) for line in paper.lines] == [
        [sb.PAPER_ERROR[n][b] for b in (2, 4, 8, 16, 32)] for n in ("bn", "gn")
    ]


def test_batchnorm_fails_at_batch_size_two_and_groupnorm_does_not(data):
    """The effect in seconds: one epoch at B = 2. BN after the linear layers is what breaks."""
    bn = sb.evaluate(sb.train_model("bn", 2, 0, data, epochs=1), data.x_test, data.y_test)
    gn = sb.evaluate(sb.train_model("gn", 2, 0, data, epochs=1), data.x_test, data.y_test)
    conv_only = sb.evaluate(
        sb.train_model("bn", 2, 0, data, epochs=1, norm1d=nn.Identity), data.x_test, data.y_test
    )
    assert bn > 40 and gn < 15 and conv_only < 15


@pytest.mark.skipif(
    not os.environ.get("NORMTUT_SLOW"), reason="about a minute; set NORMTUT_SLOW=1 to run"
)
def test_the_default_trend_holds_for_every_seed(data):
    results = sb.run(("bn", "gn"), (2, 32), sb.SEEDS, sb.EPOCHS, data=data)
    error = {(r.norm, r.batch_size, r.seed): r.test_error for r in results}
    for seed in sb.SEEDS:
        assert error["bn", 2, seed] > error["gn", 2, seed] + 20
        assert error["bn", 2, seed] > error["bn", 32, seed] + 20
        assert error["bn", 32, seed] <= error["gn", 32, seed]


@pytest.fixture(scope="module")
def torch_bn_model(data) -> nn.Module:
    """A briefly trained LeNet built from torch's own BatchNorm layers."""
    torch.manual_seed(0)
    model = digits.lenet("bn", 0, norm2d=nn.BatchNorm2d, norm1d=nn.BatchNorm1d)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for batch in torch.arange(160).split(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("name", ["5", "10"])
def test_normalized_against_torch(data, torch_bn_model, name):
    model, x = torch_bn_model, data.x_test[:21]
    layer, prefix = model[int(name)], model[: int(name)]  # the Sequential up to the layer's input
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        h = prefix.eval()(x)
        expected_eval = nn.functional.batch_norm(
            h, layer.running_mean, layer.running_var, eps=layer.eps
        )
        train_twin = copy.deepcopy(model).train()  # every BN layer on batch statistics
        hs = [train_twin[: int(name)](xb) for xb in x[:20].split(2)]
        expected_train = torch.cat(
            [nn.functional.batch_norm(hb, None, None, training=True) for hb in hs]
        )
    torch.testing.assert_close(sb.normalized(model, x, name), expected_eval)
    # Two samples: torch's float32 two-pass statistics are off by up to ~3e-4 here, normtut's
    # shifted ones by ~1e-7 (against float64), so the two differ by more than float32's default.
    torch.testing.assert_close(
        sb.normalized(model, x, name, batch_size=2), expected_train, rtol=1e-4, atol=1e-4
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    if name == "10":  # a BatchNorm1d on two samples: every feature is +-1 (just under, by eps)
        values = sb.normalized(model, x, name, batch_size=2)
        assert (values.abs() <= 1).all()
        torch.testing.assert_close(
            values[0::2], -values[1::2], rtol=0, atol=1e-4
        )  # float32 rounding


def test_partner_predictions_against_torch(data, torch_bn_model):
    x = data.x_test[:9]
    preds = sb.partner_predictions(torch_bn_model, x, 3)
    twin = copy.deepcopy(torch_bn_model).train()
    with torch.no_grad():
        expected = [twin(torch.stack([x[3], x[j]]))[0].argmax().item() for j in range(9) if j != 3]
    assert preds.tolist() == expected


def test_recalibrate_gives_the_population_statistics(data, torch_bn_model):
    x = data.x_train[:200]
    model = sb.recalibrate(torch_bn_model, x)
    with torch.no_grad():
        h = copy.deepcopy(torch_bn_model).train()[:10](
            x
        )  # layer '10' sees this while every BN uses batch stats
    var, mean = torch.var_mean(h, dim=0, unbiased=True)  # running_var is unbiased
    torch.testing.assert_close(model[10].running_mean, mean)
    torch.testing.assert_close(model[10].running_var, var)
    in_pairs = sb.recalibrate(torch_bn_model, x, batch_size=2)
    torch.testing.assert_close(
        in_pairs[1].running_mean, model[1].running_mean
    )  # the mean of equal-size batch means
    assert not torch.equal(
        torch_bn_model[10].running_mean, model[10].running_mean
    )  # the original is untouched


def test_parallel_cli_gives_the_serial_run_byte_for_byte(tmp_path):
    """--jobs 2 runs the cells in two worker processes: the same CSV and the same table."""
    args = ["small-batch", "--norms", "bn", "gn", "--batch-sizes", "8", "32", "--seeds", "0", "1"]
    outputs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}.csv"
        cmd = [sys.executable, "-m", "normtut.experiments", *args, "--epochs", "1"]
        proc = subprocess.run([*cmd, "--jobs", jobs, "--out", str(out)], capture_output=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == b""
        outputs[jobs] = (out.read_bytes(), proc.stdout.replace(str(out).encode(), b"OUT"))
    assert outputs["1"] == outputs["2"]
    assert len(read_csv(tmp_path / "jobs2.csv")) == 8


def test_parallel_run_returns_the_models_in_the_serial_order(data):
    serial = sb.run(("bn",), (16, 32), (0,), epochs=1, data=data)
    parallel = sb.run(("bn",), (16, 32), (0,), epochs=1, data=data, jobs=2)
    assert [(r.norm, r.batch_size, r.seed) for r in parallel] == [("bn", 16, 0), ("bn", 32, 0)]
    for a, b in zip(serial, parallel, strict=True):
        assert a.test_error == b.test_error
        for (k, x), y in zip(
            a.model.state_dict().items(), b.model.state_dict().values(), strict=True
        ):
            assert torch.equal(x, y), k


def test_one_progress_bar_counts_every_step_of_every_worker(data):
    seen = []
    sb.parallel.map_cells(
        sb.run_cell, [("gn", 32, 0, data, 2), ("gn", 16, 0, data, 1)], 2, seen.append
    )
    assert sorted(seen) == [45, 45, 90]  # one report per epoch: 2 epochs of 45 steps, 1 of 90


def test_jobs_must_be_positive(capsys):
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        main(["small-batch", "--jobs", "0"])
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        sb.parallel.map_cells(sb.run_cell, [], 0, print)


def test_precise_bn_evaluates_the_recalibrated_model(data):
    (r,) = sb.run(("bn",), (8,), (0,), epochs=1, precise_bn=True, data=data)
    model = sb.train_model("bn", 8, 0, data, epochs=1)
    expected = sb.evaluate(sb.recalibrate(model, data.x_train), data.x_test, data.y_test)
    assert r.test_error == expected
    assert sb.evaluate(model, data.x_test, data.y_test) != expected  # it does change something


def test_csv_round_trip_and_log_axis(tmp_path):
    results = [
        sb.Result("none", 2, 0, 88.5),
        sb.Result("bn", 2, 0, 60.0),
        sb.Result("bn", 2, 1, 1.25),
    ]
    sb.write_csv(results, tmp_path / "r.csv")
    assert sb.read_csv(tmp_path / "r.csv") == results
    ours, _ = sb.plot(results).axes
    assert ours.get_yscale() == "log" and "log scale" in ours.get_ylabel()
    assert [len(c.get_offsets()) for c in ours.collections] == [1, 2]  # every seed is a dot


BOOK_DATA = Path(__file__).resolve().parents[2] / "book" / "data"
BOOK_RESULTS = [  # the commands that wrote the results the small-batch chapter reads
    ("small_batch.csv", ["--norms", "none", "bn", "gn"]),
    ("small_batch_precise_bn.csv", ["--norms", "bn", "--batch-sizes", "2", "--precise-bn"]),
    (
        "small_batch_momentum_0.01.csv",
        ["--norms", "bn", "--batch-sizes", "2", "--momentum", "0.01"],
    ),
    ("small_batch_ln_in_sn.csv", ["--norms", "ln", "in", "sn", "--batch-sizes", "2"]),
    # chapter 11: 8 processes with 2 images each, BatchNorm per process or synchronized
    ("small_batch_8_ranks.csv", ["--norms", "bn", "--batch-sizes", "2", "--ranks", "8"]),
    ("small_batch_8_sync_ranks.csv", ["--norms", "bn", "--batch-sizes", "2", "--sync-ranks", "8"]),
]


@pytest.mark.skipif(
    not os.environ.get("NORMTUT_SLOW"), reason="minutes of CPU; set NORMTUT_SLOW=1 to run"
)
@pytest.mark.parametrize("name, args", BOOK_RESULTS)
def test_the_chapters_stored_results_are_reproduced_byte_for_byte(tmp_path, capsys, name, args):
    out = tmp_path / name
    assert main(["small-batch", *args, "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    assert out.read_bytes() == (BOOK_DATA / name).read_bytes()


def test_the_chapter_reads_every_stored_result():
    stored = sorted(p.name for p in BOOK_DATA.glob("small_batch*.csv"))
    assert stored == sorted(name for name, _ in BOOK_RESULTS)
    for name, _ in BOOK_RESULTS:
        assert len(sb.read_csv(BOOK_DATA / name)) > 0


# ---------------------------------------------------------------------------
# Several processes: --ranks, --sync-ranks, torchrun.
# ---------------------------------------------------------------------------

RANK_ARGS = ["small-batch", "--norms", "bn", "--batch-sizes", "8", "--seeds", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def one_process_16(data) -> tuple[nn.Module, float]:
    """The reference of the runs below: one process, 16 images a step, one epoch."""
    model = sb.train_model("bn", 16, 0, data, epochs=1)
    return model, sb.evaluate(model, data.x_test, data.y_test)


def test_sync_ranks_train_what_one_process_trains_on_the_global_batch(data, one_process_16):
    """2 processes of 8 images with SyncBatchNorm: the same steps as 16 images in one process."""
    model, error = one_process_16
    (r,) = sb.run(("bn",), (8,), (0,), epochs=1, data=data, ranks=2, sync=True)
    assert (r.norm, r.batch_size, r.seed, r.ranks, r.sync) == ("bn", 8, 0, 2, True)
    assert type(r.model[1]).__name__ == "SyncBatchNorm" and r.test_error == error
    for (k, x), y in zip(r.model.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4, msg=k)


def test_ranks_without_sync_normalize_each_process_alone(data, one_process_16):
    model, _ = one_process_16
    (r,) = sb.run(("bn",), (8,), (0,), epochs=1, data=data, ranks=2)
    assert (r.ranks, r.sync) == (2, False) and type(r.model[1]).__name__ == "BatchNorm2d"
    gap = (r.model[10].running_var - model[10].running_var).abs().max()
    assert gap > 1e-2  # statistics of 8 images, not of 16


def test_torchrun_runs_the_same_code_as_a_laptop(tmp_path, one_process_16):
    """``torchrun --standalone --nproc-per-node 2 -m normtut.experiments ... --sync-ranks 2``."""
    _, error = one_process_16
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "r.csv"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "normtut.experiments"]
    proc = subprocess.run(
        [*cmd, *RANK_ARGS, "--sync-ranks", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test error (%)") == 1  # rank 0 reports, rank 1 is silent
    assert "bn, 2 ranks, sync" in proc.stdout and "2 processes (gloo)" in proc.stdout
    (row,) = sb.read_csv(out)
    assert (row.ranks, row.sync) == (2, True) and f"{row.test_error:.4f}" == f"{error:.4f}"


def test_rank_options_are_checked(monkeypatch, capsys):
    with pytest.raises(SystemExit, match="--sync-ranks must be at least 2"):
        main([*RANK_ARGS, "--sync-ranks", "1"])
    with pytest.raises(SystemExit, match="--ranks must be at least 1"):
        main([*RANK_ARGS, "--ranks", "0"])
    with pytest.raises(SystemExit, match="--jobs does not combine with --ranks"):
        main([*RANK_ARGS, "--ranks", "2", "--jobs", "2"])
    with pytest.raises(SystemExit):  # one or the other
        main([*RANK_ARGS, "--ranks", "2", "--sync-ranks", "2"])
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit, match="one of 4 processes: add --sync-ranks 4"):
        main([*RANK_ARGS, "--sync-ranks", "2"])
    with pytest.raises(ValueError, match="sync=True needs ranks > 1"):
        sb.run(("bn",), (8,), (0,), sync=True)
    capsys.readouterr()


def test_results_of_several_processes_in_the_csv_and_the_table(tmp_path):
    results = [
        sb.Result("bn", 2, 0, 44.0),
        sb.Result("bn", 2, 0, 60.0, ranks=8),
        sb.Result("bn", 2, 1, 62.0, ranks=8),
        sb.Result("bn", 2, 0, 1.25, ranks=8, sync=True),
    ]
    sb.write_csv(results, tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as f:
        assert next(csv.reader(f)) == ["norm", "batch_size", "seed", "test_error", "ranks", "sync"]
    assert sb.read_csv(tmp_path / "r.csv") == results
    table = sb.results_table(results).splitlines()
    assert [line.split("  ")[0] for line in table[2:]] == ["bn", "bn, 8 ranks", "bn, 8 ranks, sync"]
    assert table[3].split()[-3:] == ["61.0", "±", "1.4"]
