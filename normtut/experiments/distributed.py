"""Several processes, one process group: how the book runs torch.distributed on a laptop.

``launch(worker, world_size, *args)`` does on one machine what ``torchrun --nproc-per-node``
does: it holds the rendezvous (a TCPStore on 127.0.0.1, on a port the OS picks), starts
``world_size`` fresh Python processes (``torch.multiprocessing``, spawn) and gives each the
environment torchrun gives (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Each
process joins the gloo group with ``process_group()``, exactly as a script started by
torchrun does, runs ``worker(*args)`` and hands back what it returned. A launch that does not
finish within ``timeout`` seconds is ended (its processes terminated) and raises
TimeoutError: a collective that one rank never joins must not hang its caller.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = 300.0  # seconds for a whole launch: start-up, the work, shutting down


def in_torchrun() -> bool:
    """True in a process that torchrun (or ``launch``) started as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@contextlib.contextmanager
def process_group(timeout: float | None = None) -> Iterator[None]:
    """Join the gloo group that RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT describe.

    The same call in a process of ``launch`` and in one of torchrun. ``timeout`` (seconds)
    bounds every collective (default: torch's). The group is destroyed on leaving.
    """
    limit = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
    dist.init_process_group("gloo", **limit)
    try:
        yield
    finally:
        dist.destroy_process_group()


def launch(
    worker: Callable[..., Any], world_size: int, *args: Any, timeout: float | None = TIMEOUT
) -> list[Any]:
    """``[worker(*args) on rank r for r in range(world_size)]``, each in its own process.

    ``worker`` must be importable (a module-level function: spawned processes import it)
    and its result picklable; inside it, ``dist.get_rank()`` says which rank it is. An
    exception in any rank ends all of them and is raised here (with the rank's traceback).
    ``timeout`` (seconds) bounds the whole launch and each collective; None: no bound on
    the launch, torch's default (30 minutes) on a collective.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    # The rendezvous lives here, as torchrun's agent hosts it: port 0 lets the OS choose a
    # free port, with no window in which another program could take it.
    store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)
    with tempfile.TemporaryDirectory(prefix="normtut-launch-") as folder:
        setup = (world_size, store.port, folder, timeout, worker, args)
        context = mp.start_processes(_run, setup, world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        try:
            wait = 0.0
            while not context.join(timeout=wait, grace_period=5):  # True: all ended well
                wait = min(60.0, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(
                        f"{world_size} processes of {worker.__name__} still running after "
                        f"{timeout:g} s (a rank waiting in a collective that another never "
                        "joined?); they were terminated"
                    )
        except mp.ProcessRaisedException as raised:
            # The rank that failed first is the cause: when it leaves the group, the others'
            # collectives fail too ("Connection closed by peer"), and may end before it.
            first = _first_error(folder)
            if first is None or first[0] == raised.error_index:
                raise
            rank, trace = first
            pid = context.processes[rank].pid
            message = f"\n\n-- Process {rank} terminated with the following error:\n{trace}"
            raise mp.ProcessRaisedException(message, rank, pid) from None
        finally:
            _end(context.processes)
        return [_load(os.path.join(folder, f"rank{r}.pkl")) for r in range(world_size)]


def _run(rank: int, world_size: int, port: int, folder: str, timeout, worker, args) -> None:
    """In a spawned process: torchrun's environment, the gloo group, ``worker``, its result."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",  # the store is launch's, as under torchrun
    )
    torch.set_num_threads(1)  # world_size processes share the machine's cores
    with process_group(timeout):
        try:
            result = worker(*args)
        except BaseException:  # noted before this rank leaves the group, then raised
            with open(os.path.join(folder, f"error{rank}.txt"), "w") as f:
                f.write(f"{time.time()!r}\n{traceback.format_exc()}")
            raise
    with open(os.path.join(folder, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def _first_error(folder: str) -> tuple[int, str] | None:
    """(rank, traceback) of the exception ``worker`` raised first in any rank, if any did."""
    errors = []
    for name in os.listdir(folder):
        if name.startswith("error"):
            with open(os.path.join(folder, name)) as f:
                when, trace = f.read().split("\n", 1)
            errors.append((float(when), int(name[len("error") : -len(".txt")]), trace))
    if not errors:
        return None
    _, rank, trace = min(errors)
    return rank, trace


def _load(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


def _end(processes: list) -> None:
    """Terminate whatever is still running (SIGTERM, then SIGKILL) and reap every process."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
