"""A circuit breaker per database: while a database is unwell, one probe per interval instead of one failure per
batch, and no work is attempted.

Only failures that say the database or the connection is unwell (:attr:`kapow.errors.Scope.DATABASE`) are
counted here; a bad row or a locked table never opens a circuit, so one team's mistake cannot hold another
team's tables. The probe is driven by a timer (the lane's prober), not by traffic, so a database that came back
while nothing was being sent is seen as healthy within one interval: ``/readyz``, the console, the alerts and the
automatic redrive of parked packets all clear on their own.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from kapow.errors import Failure

log = logging.getLogger(__name__)


class CircuitState(enum.Enum):
    CLOSED = 0  # healthy: work goes ahead
    HALF_OPEN = 1  # a probe is under way; its outcome decides
    OPEN = 2  # unwell: nothing is attempted until the next probe

    @property
    def label(self) -> str:
        return self.name.lower()


class Circuit:
    """Closed until ``failures_to_open`` database failures in a row; then open, probed every ``open_s``."""

    def __init__(self, name: str, *, failures_to_open: int, open_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._failures_to_open = failures_to_open
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._lock = threading.Lock()
        self.last_failure: Failure | None = None

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is CircuitState.CLOSED

    def success(self) -> None:
        with self._lock:
            if self._state is not CircuitState.CLOSED:
                log.info("database %s recovered; circuit closed", self.name)
            self._failures = 0
            self._state = CircuitState.CLOSED

    def failure(self, failure: Failure) -> None:
        with self._lock:
            self.last_failure = failure
            self._failures += 1
            if self._state is CircuitState.HALF_OPEN or self._failures >= self._failures_to_open:
                if self._state is CircuitState.CLOSED:
                    log.warning("database %s unwell after %d failures, circuit opened: %s", self.name,
                                self._failures, failure.message)
                self._state = CircuitState.OPEN
                self._opened_at = self._clock()

    def probe_due(self) -> bool:
        """True (and half-open) when the circuit is open and its interval has passed: the caller probes now."""
        with self._lock:
            if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self._open_s:
                self._state = CircuitState.HALF_OPEN
                return True
            return False

    def seconds_to_probe(self) -> float:
        with self._lock:
            if self._state is not CircuitState.OPEN:
                return self._open_s
            return max(0.0, self._open_s - (self._clock() - self._opened_at))
