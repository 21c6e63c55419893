"""One consume of the loop, bounded in bytes (:func:`kapow.pipeline.consume.consume_bounded`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kapow.pipeline.consume import RECORD_BYTES, Revoked, consume_bounded
from kapow.pipeline.work import PACKET_OVERHEAD

MIB = 1024 * 1024


class Record:
    def __init__(self, size: int, partition: int = 0) -> None:
        self._value = b"x" * size
        self._partition = partition

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return self._partition

    def key(self) -> bytes | None:
        return None

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None


class Queue:
    """librdkafka's side: ``ready`` records are queued; ``arriving`` ones come during a call that waits; a
    ``revoke_on`` call (1-based) runs the revoke callback of partition 0 before it returns."""

    def __init__(self, ready: list[int], arriving: list[int] | None = None, revoked: Revoked | None = None,
                 revoke_on: int = 0, partitions: int = 2) -> None:
        self.ready = [Record(s, i % partitions) for i, s in enumerate(ready)]
        self.arriving = [Record(s) for s in arriving or []]
        self.calls: list[tuple[int, float]] = []
        self.revoked, self.revoke_on = revoked, revoke_on

    def consume(self, num: int, timeout: float) -> list[Record]:
        self.calls.append((num, timeout))
        if timeout > 0:
            self.ready += self.arriving
            self.arriving = []
        if len(self.calls) == self.revoke_on and self.revoked is not None:
            self.revoked.add({("in", 0)})  # librdkafka drops the call's own outdated records itself
            self.ready = [r for r in self.ready if r.partition() != 0]
        out, self.ready = self.ready[:num], self.ready[num:]
        return out


def clock() -> float:
    return 0.0  # the wait never runs out by itself here: a short answer ends it


def test_a_backlog_of_small_records_fills_the_batch_in_two_calls() -> None:
    q = Queue([250] * 20_000)
    got = consume_bounded(q, 10_000, 0.02, 32 * MIB, Revoked(), clock)
    assert len(got) == 10_000 and q.calls == [(32, 0.02), (9_968, 0.02)], "the second call waits what is left"


def test_a_burst_of_large_records_stops_at_the_budget() -> None:
    """Asked for 10,000 while 400 records of 0.9 MB arrived during the wait, one consume took 242 (208 MB)."""
    q = Queue([], arriving=[900_000] * 400)
    got = consume_bounded(q, 10_000, 0.02, 32 * MIB, Revoked(), clock)
    assert len(got) == 37 and sum(len(r.value()) + PACKET_OVERHEAD for r in got) <= 32 * MIB
    assert q.calls == [(32, 0.02), (5, 0.02)]


def test_one_large_record_among_small_ones_does_not_shrink_the_batch() -> None:
    sizes = [250] * 10_000
    sizes[3] = 900_000
    q = Queue(sizes)
    assert len(consume_bounded(q, 10_000, 0.02, 64 * MIB, Revoked(), clock)) == 10_000, "sized by the average"


def test_when_the_wait_runs_out_nothing_more_is_asked() -> None:
    q = Queue([], arriving=[250] * 5)
    assert len(consume_bounded(q, 10_000, 0.02, 32 * MIB, Revoked(), clock)) == 5 and q.calls == [(32, 0.02)]


def test_past_the_budget_one_record_is_still_taken() -> None:
    q = Queue([5 * MIB, 5 * MIB])
    assert len(consume_bounded(q, 10_000, 0.02, 0, Revoked(), clock)) == 1 and q.calls == [(1, 0.02)]


def test_a_small_target_is_asked_for_once() -> None:
    q = Queue([250] * 100)
    assert len(consume_bounded(q, 10, 0.02, 64 * MIB, Revoked(), clock)) == 10 and q.calls == [(10, 0.02)]


def test_the_later_calls_wait_only_what_is_left_of_the_wait() -> None:
    now = [0.0]

    def ticking() -> float:
        now[0] += 0.015
        return now[0]

    q = Queue([250] * 20_000)
    consume_bounded(q, 10_000, 0.02, 32 * MIB, Revoked(), ticking)
    assert q.calls[0] == (32, 0.02) and abs(q.calls[1][1] - 0.005) < 1e-9


def test_records_taken_before_a_revoke_in_a_later_call_are_dropped() -> None:
    """A revoke in the second call: the first call's records of the revoked partition belong to its next owner."""
    revoked = Revoked()
    q = Queue([250] * 200, revoked=revoked, revoke_on=2)
    got = consume_bounded(q, 100, 0.02, 32 * MIB, revoked, clock)
    assert q.calls == [(32, 0.02), (68, 0.02), (16, 0.02)], "the third call tops up what the revoke dropped"
    assert all(r.partition() == 1 for r in got), "nothing of partition 0, revoked after it was taken"
    assert len(got) == 100


def test_when_a_revoke_takes_every_earlier_record_only_the_later_ones_stay() -> None:
    revoked = Revoked()
    q = Queue([250] * 200, revoked=revoked, revoke_on=2, partitions=1)
    q.arriving = [Record(250, 1) for _ in range(50)]
    got = consume_bounded(q, 100, 0.02, 32 * MIB, revoked, clock)
    assert q.calls == [(32, 0.02), (68, 0.02)] and len(got) == 50, "the revoked partition's records all dropped"


def test_a_revoke_in_the_first_call_is_librdkafkas_to_clean() -> None:
    revoked = Revoked()
    q = Queue([250] * 200, revoked=revoked, revoke_on=1)
    got = consume_bounded(q, 100, 0.02, 32 * MIB, revoked, clock)
    assert len(got) == 100 and all(r.partition() == 1 for r in got)


@given(st.lists(st.integers(0, 2 * MIB), max_size=300), st.integers(1, 20_000), st.integers(0, 256 * MIB))
def test_never_more_than_the_target_and_the_waiting_calls_sized_by_the_budget(sizes: list[int], target: int,
                                                                             budget: int) -> None:
    q = Queue(sizes)
    got = consume_bounded(q, target, 0.02, budget, Revoked(), clock)
    assert len(got) <= target and [len(r.value()) for r in got] == sizes[:len(got)]
    assert q.calls[0] == (max(1, min(target, budget // RECORD_BYTES)), 0.02)
    for i, (num, _timeout) in enumerate(q.calls[1:], start=1):
        before = sum(n for n, _ in q.calls[:i])
        spent = sum(s + PACKET_OVERHEAD for s in sizes[:before])
        assert num * (spent // before) <= budget - spent, "each later call asks for what the budget has left"
