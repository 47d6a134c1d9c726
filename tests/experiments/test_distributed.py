"""The launcher: ranks in rank order, a failing rank ends the others, a hang ends in time."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import sync_workers as W
from torch.multiprocessing import ProcessRaisedException

from normtut.experiments import distributed


def test_an_error_on_one_rank_ends_every_rank_and_is_raised():
    # rank 1 waits in an all_reduce that rank 0 never joins
    with pytest.raises(ProcessRaisedException, match="rank 0 gives up"):
        distributed.launch(W.raise_on_rank_0, 2, timeout=240)
    assert multiprocessing.active_children() == []


def test_the_first_error_is_raised_even_when_another_rank_ends_first():
    # rank 1's all_reduce fails ("Connection closed by peer") and its process ends while
    # rank 0, which raised first, is still exiting: the cause is rank 0's error
    with pytest.raises(ProcessRaisedException, match="rank 0 gives up") as raised:
        distributed.launch(W.raise_on_rank_0_then_linger, 2, timeout=240)
    assert raised.value.error_index == 0
    assert multiprocessing.active_children() == []


def test_a_hang_is_ended_by_the_timeout():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="still running after 20 s"):
        distributed.launch(W.hang_on_rank_1, 2, timeout=20)
    assert time.monotonic() - start < 80  # 20 s, plus 5 s grace, plus a busy machine
    assert multiprocessing.active_children() == []


def test_bad_world_size():
    with pytest.raises(ValueError, match="at least 1"):
        distributed.launch(W.hang_on_rank_1, 0)


def test_in_torchrun_reads_the_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert not distributed.in_torchrun()
    monkeypatch.setenv("RANK", "2")
    assert distributed.in_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.in_torchrun()
