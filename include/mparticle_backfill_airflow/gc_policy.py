"""The garbage collector's settings while a task streams records: fewer, cheaper collections.

Why. CPython's cyclic collector runs a young collection every 700 net container allocations, and a
decoded record is dozens of dicts and lists: a stage collects thousands of times per chunk, and each
collection that reaches the older generations walks every tracked object of the process, Airflow's and
boto3's included (~180,000 before the task reads anything). ``send`` suffers most: it holds a slice of
its shard (every replay of a user must be seen before the user's batches are merged), so the objects the
collector walks again and again grow with it. Measured on a 30,000-record shard (decode, coalesce, pack,
the request bodies; Airflow and boto3 imported): 87 µs per replay with the default thresholds, 32 µs
with the policy below (the collector off: 30 µs); in ``bench/bench_dag.py`` (50,000 records) send went
from 134 to 87 µs per record.

What. For the task's duration: :func:`gc.freeze` moves what the process holds when the task starts
(Airflow, the imports: nothing of the task's data) to the permanent generation, which collections never
walk; the young generation's threshold goes from 700 to 50,000 allocations and the older ones' from 10
to 20 and 100. Cyclic garbage waits a little longer to be freed: the records' own objects are acyclic
(freed by reference counting at once), so memory does not grow. Afterwards the previous thresholds are
restored and the frozen objects are unfrozen (a worker's task process ends anyway; ``dag.test()`` runs
every task in one process and must get its collector back as it was).
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

BULK_THRESHOLDS = (50_000, 20, 100)

P = ParamSpec("P")
R = TypeVar("R")


@contextlib.contextmanager
def bulk_collection(thresholds: tuple[int, int, int] = BULK_THRESHOLDS) -> Iterator[None]:
    """Collect garbage less often while the block streams records (see the module docstring)."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


def bulk_task(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` under :func:`bulk_collection`."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with bulk_collection():
            return function(*args, **kwargs)

    return wrapper
