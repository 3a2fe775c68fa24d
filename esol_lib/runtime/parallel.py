"""Per-image CPU work (DenseCRF) spread over worker processes, results in input order.

pydensecrf runs on one core; seed CRF and IR labels call it thousands of times, so on a
multi-core machine the cores wait. :func:`map_ordered` runs a function over items in forked
worker processes and yields the results in the order of the items, so the outcome is the same
as a plain loop's, only sooner. Only for NumPy/pydensecrf work: a forked child must not call
into torch (its OpenMP thread pool does not survive ``fork``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from esol_lib.runtime.errors import StageError

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["cpu_workers", "map_ordered"]

# The task of the pool being run: set before the fork, inherited by the workers (no pickling of
# closures, datasets or models).
_TASK: tuple[Callable, Sequence] | None = None


def cpu_workers() -> int:
    """The cores this process may use, divided among the ranks of a distributed run (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return max(1, cores // max(world, 1))


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a worker ends when the process that forked it does.

    Without this, a parent killed with SIGKILL (a user, the OOM killer) leaves its workers blocked
    forever on the task queue, still holding every file the parent had open: the run folder's lock
    (``flock`` belongs to the open file, which they share) and the pipes a caller waits on.
    ``PR_SET_PDEATHSIG`` is Linux's; elsewhere this does nothing.
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def _run(index: int):
    fn, items = _TASK  # type: ignore[misc]
    return fn(items[index])


def map_ordered(
    fn: Callable[[T], R], items: Sequence[T], workers: int | None = None, chunksize: int = 4
) -> Iterator[R]:
    """``fn(item)`` for each item, in order; on ``workers`` forked processes when there are more than one.

    ``workers`` None: :func:`cpu_workers`. Falls back to a plain loop with one worker, with fewer
    than two items, or where ``fork`` is unavailable. An exception in ``fn`` is raised here; a
    worker that dies is a :class:`StageError`.
    """
    global _TASK
    workers = cpu_workers() if workers is None else workers
    if workers <= 1 or len(items) < 2 or "fork" not in mp.get_all_start_methods():
        for item in items:
            yield fn(item)
        return
    if _TASK is not None:
        raise RuntimeError("map_ordered is not re-entrant: one pool at a time")
    _TASK = (fn, items)
    # concurrent.futures, not multiprocessing.Pool: a worker that dies (SIGKILL, the OOM killer)
    # breaks the pool with an error here, where Pool would wait forever for its lost task.
    pool = ProcessPoolExecutor(
        min(workers, len(items)),
        mp_context=mp.get_context("fork"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
    try:
        yield from pool.map(_run, range(len(items)), chunksize=chunksize)
    except BrokenProcessPool:
        raise StageError(
            "a worker process died (killed, or out of memory?); what was finished is kept: "
            "run the same command again to go on"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _TASK = None
