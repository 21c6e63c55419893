"""The read-ahead rule at exact values: the line, what is left out, how long the loop may wait, the recount."""

from __future__ import annotations

from kapow.pipeline.readahead import CAP, FLOOR, PAUSE_S, RECOUNT_S, ReadAhead


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_under_the_line_or_paused_the_loop_reads_and_counts_nothing() -> None:
    asked: list[int] = []
    r = ReadAhead(2000, lambda: asked.append(1) or 0, Clock())
    assert r.line == 500 == FLOOR * 2000, "until a batch is seen: the floor"
    assert not r.full(499, paused=False)
    assert not r.full(10_000, paused=True), "paused: the memory bound's own logic is in charge"
    assert asked == [] and r.since == 0.0


def test_at_the_line_the_loop_waits_for_a_quarter_second_then_reads_on_until_it_falls_under() -> None:
    clock = Clock()
    r = ReadAhead(2000, lambda: 0, clock)
    assert r.full(500, paused=False) and r.since == 100.0
    clock.now += PAUSE_S - 0.01
    assert r.full(800, paused=False)
    clock.now += 0.01
    assert not r.full(800, paused=False), "waited PAUSE_S: read on"
    assert not r.full(900, paused=False) and r.since == 100.0, "still reading on while above the line"
    assert not r.full(499, paused=False) and r.since == 0.0
    assert r.full(500, paused=False) and r.since == clock.now, "a new wait starts afresh"


def test_bytes_stuck_behind_failures_are_left_out_and_recounted_at_most_every_tenth_of_a_second() -> None:
    clock = Clock()
    stuck = [400]
    counted: list[float] = []

    def count() -> int:
        counted.append(clock.now)
        return stuck[0]

    clock.now = 1.0
    r = ReadAhead(2000, count, clock)
    assert not r.full(899, paused=False), "899 held, 400 of them stuck: 499 is under the line"
    assert r.full(900, paused=False)
    stuck[0] = 900
    clock.now = 1.0 + RECOUNT_S / 2
    assert r.full(900, paused=False), "not recounted yet"
    clock.now = 1.0 + RECOUNT_S
    assert not r.full(900, paused=False) and r.since == 0.0
    assert counted == [1.0, 1.0 + RECOUNT_S]


def test_the_line_holds_two_units_and_a_batch_of_the_rows_being_read_between_a_quarter_and_a_half() -> None:
    r = ReadAhead(2000, lambda: 0, Clock())
    assert (r.floor, r.cap) == (FLOOR * 2000, CAP * 2000) == (500, 1000)
    r.fit(10.0, 80)
    assert r.line == 800
    assert not r.full(799, paused=False) and r.full(800, paused=False)
    r.fit(10.0, 30)
    assert r.line == 500, "small rows: never under the floor"
    r.fit(100.0, 30)
    assert r.line == 1000, "large rows: never over the cap"


def test_a_consume_may_bring_the_rest_of_the_line_past_what_is_stuck_and_a_quarter_of_it_at_least() -> None:
    clock = Clock()
    stuck = [0]
    r = ReadAhead(2000, lambda: stuck[0], clock)
    assert r.line == 500
    assert r.budget(0) == 500 and r.budget(300) == 200
    assert r.budget(480) == 125 and r.budget(5_000) == 125, "past the line (read on after PAUSE_S): a quarter"
    stuck[0] = 4_000
    assert r.full(4_100, paused=False) is False, "counted: 4,000 stuck behind a held table"
    assert r.budget(4_100) == 400, "what waits behind a held table does not shrink the others' batches"
    assert r.budget(0) == 500, "never more than the line"
