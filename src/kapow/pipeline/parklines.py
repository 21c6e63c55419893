"""How many "parking" lines the whole writer writes a second, whatever the number of lanes parking.

A lane that parks its works (its table held, or its database down, past ``hold_s``) writes a line per parked work,
at most :data:`PER_S` a second; the others of that second are counted in one line. The budget was each lane's:
a writer with many databases down at once (a whole server stopped: a hostile run measured 2,516 error lines from
two outages of ~40 s) wrote ten lines a second per database, so a thousand databases would have written ten
thousand. One budget, shared by every lane of the writer, bounds the log by the writer instead.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("kapow.pipeline.lane")

PER_S = 10  # "parking" lines the writer writes a second; the others of that second are counted in one line


class ParkLines:
    """The writer's budget of "parking" lines: asked by every lane's workers, so every call takes its lock."""

    def __init__(self, per_s: int = PER_S) -> None:
        self._lock = threading.Lock()
        self._per_s = per_s
        self._since = 0.0  # the second the lines are counted in (monotonic)
        self._lines = 0
        self._unlogged = 0

    def take(self, now: float) -> bool:
        """True when a parked work may have its own line now; else it is counted in the next summary line."""
        with self._lock:
            self._roll(now)
            if self._lines < self._per_s:
                self._lines += 1
                return True
            self._unlogged += 1
            return False

    def roll(self, now: float) -> None:
        """Write the summary of the second that ended, if any work went without a line in it."""
        with self._lock:
            self._roll(now)

    def _roll(self, now: float) -> None:
        if now - self._since < 1.0:
            return
        if self._unlogged:
            log.error("%d more works parked without a line each (the writer writes at most %d such lines a second;"
                      " every packet is on the system-errors topic)", self._unlogged, self._per_s)
        self._since = now
        self._lines = self._unlogged = 0
