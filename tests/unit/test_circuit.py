"""The per-destination circuit breaker: closed -> open after N failures -> one probe -> closed or open again."""

from __future__ import annotations

import time

from kapow.errors import ErrorCode, Failure
from kapow.pipeline.persist import Circuit

DOWN = Failure(ErrorCode.DATABASE_UNAVAILABLE, "refused")


def test_opens_after_consecutive_failures_and_parks() -> None:
    c = Circuit(failures_to_open=3, open_s=60)
    for _ in range(2):
        c.failure(DOWN)
        assert c.admit() == "go" and c.state == "closed"
    c.failure(DOWN)
    assert c.state == "open" and c.admit() == "park" and c.last_failure is DOWN


def test_success_resets_the_count() -> None:
    c = Circuit(failures_to_open=2, open_s=60)
    c.failure(DOWN)
    c.success()
    c.failure(DOWN)
    assert c.admit() == "go"


def test_one_probe_at_a_time_then_close_or_reopen() -> None:
    c = Circuit(failures_to_open=1, open_s=0.05)
    c.failure(DOWN)
    assert c.admit() == "park"
    time.sleep(0.06)
    assert c.admit() == "go"  # this caller is the probe
    assert c.admit() == "wait" and c.state == "half_open"  # the others wait for its outcome
    c.failure(DOWN)  # the probe failed: open again, for another interval
    assert c.admit() == "park"
    time.sleep(0.06)
    assert c.admit() == "go"
    c.success()
    assert c.state == "closed" and c.admit() == "go" and c.admit() == "go"
