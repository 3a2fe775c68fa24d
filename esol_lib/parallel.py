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
from typing import Callable, Iterator, Sequence, TypeVar

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


def _run(index: int):
    fn, items = _TASK  # type: ignore[misc]
    return fn(items[index])


def map_ordered(fn: Callable[[T], R], items: Sequence[T], workers: int | None = None,
                chunksize: int = 4) -> Iterator[R]:
    """``fn(item)`` for each item, in order; on ``workers`` forked processes when there are more than one.

    ``workers`` None: :func:`cpu_workers`. Falls back to a plain loop with one worker, with fewer
    than two items, or where ``fork`` is unavailable. An exception in ``fn`` is raised here.
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
    try:
        with mp.get_context("fork").Pool(min(workers, len(items))) as pool:
            yield from pool.imap(_run, range(len(items)), chunksize=chunksize)
    finally:
        _TASK = None
