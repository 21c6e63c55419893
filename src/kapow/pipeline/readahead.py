"""How far the loop reads ahead of the lanes: a few batches, not ``max_buffer_bytes`` of them.

The loop consumes and sorts faster than PostgreSQL lands, so with nothing but the memory bound it read a
pre-filled topic into memory until the bound: 924 MiB of RSS for a million packets of 250 B. Draining a backlog
is as fast with a few batches in memory. So past a line the loop waits for answers instead of consuming
(librdkafka stops fetching by itself; a pause would throw its prefetched records away).

The line is what the lanes need next, in bytes of the rows being read: two units (``unit_max_rows`` each: the one
being written and the next) and the next batch, at least :data:`FLOOR` and at most :data:`CAP` of
``max_buffer_bytes``. With a fixed quarter, 3.7 kB change events were 16 % slower (each unit came short); with a
fixed half, 250 B packets held 40 MiB more than they need. Two limits keep the wait from hurting anyone:

* what waits behind a held table or an open circuit is not counted: one stuck destination never slows the
  reading of the other teams' packets (:meth:`kapow.pipeline.persist.Persister.stuck_bytes`);
* waiting lasts :data:`PAUSE_S` at most; past it the loop reads on, up to ``max_buffer_bytes``, where the
  runner's pause and the parking of held packets take over, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

FLOOR = 0.25  # of max_buffer_bytes: the line is never lower
CAP = 0.5  # ... nor higher
PAUSE_S = 0.25  # the longest the loop waits so, at a time
RECOUNT_S = 0.1  # stuck bytes cost a walk over the lanes' queues: counted at most this often


class ReadAhead:
    """Owned by the loop's thread (:class:`kapow.pipeline.runner.Writer`): whether to skip the next consume."""

    def __init__(self, max_buffer_bytes: int, stuck_bytes: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.floor, self.cap = FLOOR * max_buffer_bytes, CAP * max_buffer_bytes
        self.line = self.floor
        self._stuck_bytes = stuck_bytes
        self._clock = clock
        self.since = 0.0  # when the read-ahead became full (0: it is not)
        self._stuck, self._stuck_at = 0, -RECOUNT_S

    def fit(self, row_bytes: float, rows_ahead: int) -> None:
        """Move the line to hold ``rows_ahead`` rows of ``row_bytes`` (counted as ``held_bytes`` counts them)."""
        self.line = min(self.cap, max(self.floor, row_bytes * rows_ahead))

    def full(self, held_bytes: int, *, paused: bool) -> bool:
        """True: wait for answers instead of consuming (``held_bytes`` held, the consumer ``paused`` or not)."""
        if paused or held_bytes < self.line:
            self.since = 0.0
            return False
        now = self._clock()
        if now - self._stuck_at >= RECOUNT_S:
            self._stuck, self._stuck_at = self._stuck_bytes(), now
        if held_bytes - self._stuck < self.line:
            self.since = 0.0
            return False
        if not self.since:
            self.since = now
        return now - self.since < PAUSE_S

    def budget(self, held_bytes: int) -> int:
        """Bytes of records the next consume may bring (:mod:`kapow.pipeline.consume`): up to the line, not counting
        what is stuck (so a stuck table never shrinks the other tables' batches), and a quarter of the line at
        least (past the line the loop reads on only after :data:`PAUSE_S`: then in batches of that)."""
        stuck = self._stuck if held_bytes >= self.line else 0  # counted by full() at the line, recounted there
        return int(max(self.line / 4, min(self.line, self.line - (held_bytes - stuck))))
