"""Run independent experiment cells in worker processes, with one progress bar.

Each cell is a deterministic function of its arguments (its own seeds, one thread), so
the results do not depend on which worker ran it or when: ``map_cells`` returns them in
the order of ``cells``, exactly as a serial loop would.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

Progress = Callable[[int], None]  # called with a number of finished steps

_progress_queue: Any = None  # a worker's end of the queue its progress goes to


def cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _report(steps: int) -> None:
    _progress_queue.put(steps)


def _call(fn: Callable, args: tuple) -> Any:
    """In a worker: ``fn(*args, progress=...)`` with progress sent to the parent."""
    return fn(*args, progress=_report)


def _drain(progress_queue: Any, progress: Progress) -> None:
    while True:
        try:
            progress(progress_queue.get_nowait())
        except queue.Empty:
            return


def map_cells(
    fn: Callable, cells: Sequence[tuple], jobs: int, progress: Progress, cost=None
) -> list:
    """``[fn(*cell, progress=progress) for cell in cells]``, computed by ``jobs`` processes.

    ``fn`` must be importable (a module-level function) and report its finished steps by
    calling ``progress(steps)``. ``cost(cell)`` orders the work, largest first, so that no
    worker is left with a long cell at the end; the results keep the order of ``cells``.
    ``jobs=1`` runs in this process. Workers import the main module, so a script calling
    this with ``jobs > 1`` needs the ``if __name__ == "__main__":`` guard.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(cells) <= 1:
        return [fn(*cell, progress=progress) for cell in cells]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    progress_queue = context.Queue()
    order = sorted(range(len(cells)), key=lambda i: -cost(cells[i])) if cost else range(len(cells))
    with ProcessPoolExecutor(
        min(jobs, len(cells)), context, initializer=_init_worker, initargs=(progress_queue,)
    ) as pool:
        futures = {i: pool.submit(_call, fn, cells[i]) for i in order}
        pending = set(futures.values())
        while pending:
            _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(progress_queue, progress)
        results = [futures[i].result() for i in range(len(cells))]
    _drain(progress_queue, progress)
    return results
