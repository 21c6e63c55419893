"""Process-level helpers of the writer: the garbage collector's tuning and calls bounded in time."""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

from kapow.pipeline.work import LARGE_PACKET, WorkResult, record_bytes

log = logging.getLogger("kapow.writer")


def tune_gc() -> None:
    """Collect young objects every 50,000 allocations instead of 700, and freeze what startup made.

    Every packet allocates a few containers (its row, key tuple), so the default threshold ran a generation-0
    collection every few packets' worth of work; the hot path makes no reference cycles, so those collections
    found nothing and cost about a quarter of the writer's CPU (measured: 2.4 s -> 1.8 s of CPU for 300,000
    packets). Memory stays bounded: batches are released as soon as they are committed.

    No full collection before the freeze: it found ~20 unreachable objects after the imports and cost 16-38 ms of
    CPU at every start (a tenth of a start's CPU beside the imports); frozen, they are a few kB kept for good.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _malloc_trim()  # resolved once at import, never changed


def trim_memory() -> bool:
    """Give the memory freed in every thread's malloc arena back to the system (glibc's ``malloc_trim``).

    True when glibc did it. Costs a few milliseconds; :class:`Trimmer` decides when it is worth them.
    """
    return bool(_MALLOC_TRIM is not None and _MALLOC_TRIM(0) >= 0)


class Trimmer:
    """Trims the process's memory after every ``every_bytes`` of large packets were let go (owned by the loop).

    Large records leave large free blocks behind: glibc raises its mmap threshold to the size of each mapped block
    freed, so the next payloads of a few MB come from the malloc arenas of the threads that touch them (the
    client's, the lanes'), which keep them. After 400 records of 0.9 MB the writer's RSS had grown by 7 to 219 MB,
    by how many arenas the records had touched; trimmed, by -1 to +1 MB. The trim follows the release of the
    packets, counted across batches and units, and the last of a burst is trimmed once nothing is in flight. (It
    used to follow a unit's write, when that unit's packets and the ones read ahead were still held: the memory of
    a burst's end waited for the next unit, and CI measured +305 MB when the last row had landed.) Each packet
    counts by itself (:data:`~kapow.pipeline.work.LARGE_PACKET`; a work's average hid 300 rows of 0.9 MB among
    20,000 small ones of one table, and 92 MB stayed untrimmed). Small packets never count: their memory is
    reused at once, and a trim per batch would cost a few percent.
    """

    def __init__(self, *, every_bytes: int = 8 * 1024 * 1024, trim: Callable[[], bool] = trim_memory) -> None:
        self.every_bytes = every_bytes
        self._trim = trim
        self.pending = 0  # bytes of large packets let go since the last trim
        self.trims = 0

    def freed(self, large_bytes: int) -> None:
        """Large packets (over :data:`~kapow.pipeline.work.LARGE_PACKET` each) of ``large_bytes`` were let go."""
        self.pending += large_bytes

    def answered(self, result: WorkResult) -> None:
        """A work's packets were let go; its failed ones go when their error records are acknowledged."""
        held = sum(size for r in result.failed if (size := record_bytes(r.msg)) > LARGE_PACKET)
        self.freed(result.work.large - held)

    def acked(self, size: int) -> None:
        """An error record of ``size`` bytes (:func:`~kapow.pipeline.work.record_bytes`) was acknowledged: its packet
        is let go."""
        self.freed(size if size > LARGE_PACKET else 0)

    def settle(self, *, idle: bool = False) -> bool:
        """Trim when enough large packets were let go since the last time, or some were and nothing is in flight
        (``idle``: the last of a burst is given back too, not kept until the next burst); True when it trimmed."""
        if self.pending < (self.every_bytes // 8 if idle else self.every_bytes):
            return False
        self.pending = 0
        self.trims += 1
        return self._trim()


def bounded(call: Any, timeout: float, what: str) -> None:
    """Run ``call`` on a daemon thread and wait at most ``timeout``: a stuck broker cannot hold the exit."""
    thread = threading.Thread(target=_quiet, args=(call, what), name=f"kapow-{what.replace(' ', '-')}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        log.warning("%s did not finish within %.0f s; leaving it", what, timeout)


def _quiet(call: Any, what: str) -> None:
    try:
        call()
    except Exception as exc:
        log.warning("%s: %s", what, exc)
