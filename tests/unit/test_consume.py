"""One consume of the loop, bounded in bytes (:func:`kapow.pipeline.consume.consume_bounded`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kapow.pipeline.consume import RECORD_BYTES, consume_bounded

MIB = 1024 * 1024


class Record:
    def __init__(self, size: int) -> None:
        self._value = b"x" * size

    def value(self) -> bytes:
        return self._value


class Queue:
    """librdkafka's side: ``ready`` records are queued now; a call that waits may also get ``arriving`` ones."""

    def __init__(self, ready: list[int], arriving: list[int] | None = None) -> None:
        self.ready = [Record(s) for s in ready]
        self.arriving = [Record(s) for s in arriving or []]
        self.calls: list[tuple[int, float]] = []

    def consume(self, num: int, timeout: float) -> list[Record]:
        self.calls.append((num, timeout))
        if timeout > 0:
            self.ready += self.arriving
            self.arriving = []
        out, self.ready = self.ready[:num], self.ready[num:]
        return out


def test_a_backlog_of_small_records_fills_the_batch_in_two_calls() -> None:
    q = Queue([250] * 20_000)
    got = consume_bounded(q, 10_000, 0.02, 32 * MIB)
    assert len(got) == 10_000 and q.calls == [(32, 0.02), (9_968, 0)]


def test_a_burst_of_large_records_stops_at_the_budget() -> None:
    """Asked for 10,000 while 400 records of 0.9 MB arrived during the wait, one consume took 242 (208 MB)."""
    q = Queue([], arriving=[900_000] * 400)
    got = consume_bounded(q, 10_000, 0.02, 32 * MIB)
    assert sum(len(r.value()) for r in got) <= 32 * MIB + 900_000
    assert q.calls[0] == (32, 0.02) and q.calls[1][1] == 0


def test_when_the_wait_runs_out_nothing_more_is_asked() -> None:
    q = Queue([], arriving=[250] * 5)
    assert len(consume_bounded(q, 10_000, 0.02, 32 * MIB)) == 5 and q.calls == [(32, 0.02)]


def test_past_the_budget_one_record_is_still_taken() -> None:
    q = Queue([5 * MIB, 5 * MIB])
    assert len(consume_bounded(q, 10_000, 0.02, 0)) == 1 and q.calls == [(1, 0.02)]


def test_a_small_target_is_asked_for_once() -> None:
    q = Queue([250] * 100)
    assert len(consume_bounded(q, 10, 0.02, 64 * MIB)) == 10 and q.calls == [(10, 0.02)]


@given(st.lists(st.integers(0, 2 * MIB), max_size=300), st.integers(1, 20_000), st.integers(0, 256 * MIB))
def test_never_more_than_the_target_and_the_budget_past_one_queue(sizes: list[int], target: int,
                                                                   budget: int) -> None:
    """What the wait returns is bounded by the budget at RECORD_BYTES a record; the rest by what was queued."""
    q = Queue(sizes)
    got = consume_bounded(q, target, 0.02, budget)
    assert len(got) <= target and [len(r.value()) for r in got] == sizes[:len(got)]
    first = max(1, min(target, budget // RECORD_BYTES))
    assert q.calls[0] == (first, 0.02)
    if len(q.calls) > 1:
        largest = max(sizes[:first])
        assert q.calls[1][1] == 0 and q.calls[1][0] * largest <= budget - sum(sizes[:first])
