"""Which tables a lane writes next: the scheduling rules, apart from the threads and the locks that apply them.

A lane keeps one FIFO queue of works per table (:class:`TableQueue`). A unit of work takes, oldest first, the head
works of every table that is ready (not being written, not waiting out a hold) up to ``unit_max_rows``, so many
small tables share one transaction; a table that failed recently (held, or "alone" after a whole unit timed out)
is written in a unit of its own, so that it can only hold itself. These functions only read and pop queues; the
caller (:class:`kapow.pipeline.lane.DatabaseLane`) holds its lock around them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kapow.contract import TableKey
from kapow.errors import Failure
from kapow.pipeline.unit import TableJob
from kapow.pipeline.work import TableWork

MAX_TABLES_PER_UNIT = 1000


@dataclass(slots=True, eq=False)
class TableQueue:
    """One table's works, in consumption order, and what holds it."""

    key: TableKey
    works: deque[TableWork] = field(default_factory=deque)
    busy: bool = False  # a worker is writing it
    held_until: float = 0.0  # monotonic; retried alone after this
    backoff: float = 0.0
    failure: Failure | None = None  # why it is held (None: healthy)
    alone_until: float = 0.0  # written in a unit of its own until then

    def alone(self, now: float) -> bool:
        return self.alone_until > now or self.failure is not None


def pick(pending: dict[TableKey, TableQueue], now: float, budget: int, *, alone_ok: bool = True) -> list[TableJob]:
    """The next unit: the ready tables' head works, oldest first, marked busy and popped (``pending`` updated).
    Without ``alone_ok``, no table that is written alone is taken (the worker is kept for the others)."""
    ready = [q for q in pending.values() if not q.busy and q.held_until <= now and q.works]
    if not ready:
        return []
    ready.sort(key=lambda q: q.works[0].enqueued_at)
    if ready[0].alone(now) and alone_ok:
        return [pop(pending, ready[0], budget)]
    jobs: list[TableJob] = []
    for queue in ready:
        if queue.alone(now):
            continue
        job = pop(pending, queue, budget)
        jobs.append(job)
        budget -= sum(len(w.rows) for w in job.works)
        if budget <= 0 or len(jobs) >= MAX_TABLES_PER_UNIT:
            break
    return jobs


def pop(pending: dict[TableKey, TableQueue], queue: TableQueue, budget: int) -> TableJob:
    """The head work of ``queue`` and those behind it that fit in ``budget`` rows (at least one), as one job."""
    works = [queue.works.popleft()]
    rows = len(works[0].rows)
    while queue.works and rows + len(queue.works[0].rows) <= budget:
        works.append(queue.works.popleft())
        rows += len(works[-1].rows)
    queue.busy = True
    if not queue.works:
        pending.pop(queue.key, None)
    return TableJob(queue.key, works[0].config, works)


def next_wake(pending: dict[TableKey, TableQueue], now: float, hold_s: float, *, lane_down: bool) -> float:
    """Seconds until something may change without a new work: a hold ends, or a work's ``hold_s`` runs out."""
    wake = 0.5
    for queue in pending.values():
        if queue.works:
            if queue.held_until > now:
                wake = min(wake, queue.held_until - now)
            if queue.failure is not None or lane_down:
                wake = min(wake, queue.works[0].enqueued_at + hold_s - now)
    return wake
