"""How big the next batch is: base size, growth while a backlog spreads thin, and the way back.

The sizer is pure arithmetic over what the last batch looked like; these pin its rules at exact values, and a
property checks its bounds over any sequence of batches. The last test drives the writer's loop on the in-memory
Kafka: a backlog spread over 100 tables makes each consume ask for more, a dense one does not.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kapow.pipeline.batch import BatchSizer
from tests.unit.test_runner import packet, steps, writer

MiB = 1024 * 1024


def test_a_full_batch_spread_thin_doubles_the_next_up_to_the_cap() -> None:
    s = BatchSizer(5000, 40_000, 256 * MiB)
    assert s.target == 5000
    assert s.observe(5000, 5000, 4000, 5000 * 300) == 10_000
    assert s.observe(10_000, 10_000, 6000, 10_000 * 300) == 20_000
    assert s.observe(20_000, 20_000, 8000, 20_000 * 300) == 40_000
    assert s.observe(40_000, 40_000, 9000, 40_000 * 300) == 40_000, "never past the cap"


def test_a_short_batch_means_no_backlog_and_returns_to_the_base_at_once() -> None:
    s = BatchSizer(5000, 40_000, 256 * MiB)
    s.observe(5000, 5000, 4000, 5000 * 300)
    s.observe(10_000, 10_000, 4000, 10_000 * 300)
    assert s.target == 20_000
    assert s.observe(4999, 4999, 4000, 4999 * 300) == 5000


def test_a_batch_as_long_as_the_base_is_a_backlog_even_when_the_target_was_higher() -> None:
    s = BatchSizer(5000, 40_000, 256 * MiB)
    s.observe(5000, 5000, 4000, 5000 * 300)
    assert s.observe(7000, 7000, 4000, 7000 * 300) == 20_000, "7,000 of 10,000 asked: still a backlog"


def test_dense_traffic_halves_the_target_back_and_the_band_between_keeps_it() -> None:
    s = BatchSizer(5000, 40_000, 256 * MiB)
    for n in (5000, 10_000, 20_000):
        s.observe(n, n, n, n * 300)
    assert s.target == 40_000
    assert s.observe(40_000, 40_000, 4000, 40_000 * 300) == 40_000, "10 rows a table: neither thin nor dense"
    assert s.observe(40_000, 40_000, 2500, 40_000 * 300) == 20_000, "16 rows a table: dense, halved"
    assert s.observe(20_000, 20_000, 100, 20_000 * 300) == 10_000
    assert s.observe(10_000, 10_000, 1, 10_000 * 300) == 5000
    assert s.observe(5000, 5000, 1, 5000 * 300) == 5000, "never under the base"


def test_few_tables_never_grow_the_batch_however_thin() -> None:
    s = BatchSizer(10, 1000, 256 * MiB)
    assert s.observe(10, 10, 10, 100) == 10, "10 tables of one row each: under MIN_WORKS"
    s = BatchSizer(100, 1000, 256 * MiB)
    assert s.observe(100, 100, BatchSizer.MIN_WORKS, 1000) == 200


def test_large_records_bound_the_growth_by_a_quarter_of_the_buffer() -> None:
    s = BatchSizer(100, 100_000, 256 * MiB)
    # 100 kB records: a quarter of 256 MiB holds 671 of them
    assert s.observe(100, 100, 100, 100 * 100_000) == 200
    assert s.observe(200, 200, 200, 200 * 100_000) == 400
    assert s.observe(400, 400, 400, 400 * 100_000) == 671
    assert s.observe(671, 671, 671, 671 * 100_000) == 671


def test_a_cap_under_the_base_turns_growth_off() -> None:
    s = BatchSizer(5000, 1, 256 * MiB)
    assert s.cap == 5000
    assert s.observe(5000, 5000, 5000, 5000 * 300) == 5000


batches = st.lists(st.tuples(st.integers(0, 200_000), st.integers(0, 16), st.integers(0, 100_000),
                             st.integers(1, 1_000_000)), max_size=40)


@given(st.integers(1, 100_000), st.integers(1, 1_000_000), batches)
def test_the_target_stays_between_the_base_and_the_bounds(base: int, cap: int,
                                                          seen: list[tuple[int, int, int, int]]) -> None:
    s = BatchSizer(base, cap, 256 * MiB)
    for received, per, works, size in seen:
        rows = min(received * per, received * 16)
        target = s.observe(received, rows, min(works, max(rows, 1)), received * size)
        assert base <= target <= max(base, cap)
        if target > base:  # grown: within a quarter of the buffer at the last record size
            assert target * max(1, received * size // max(1, received)) <= 64 * MiB


def test_the_loop_asks_for_more_while_a_backlog_spreads_over_many_tables() -> None:
    thin = [packet(f"t{i % 100}", i) for i in range(1000)]  # 100 tables, one row each per batch of 100
    w, consumer, _producer, _persister = writer({0: thin}, "batch_max_messages = 100\nbatch_spread_max_messages = 400")
    asked = []
    for _ in range(4):
        before = len(consumer.consumed)
        w.step()
        asked.append(sum(num for num, _timeout in consumer.consumed[before:]))  # the waiting call and the rest
    assert asked == [100, 200, 400, 400], asked

    dense = [packet("one", i) for i in range(1000)]
    w, consumer, _producer, _persister = writer({0: dense}, "batch_max_messages = 100\nbatch_spread_max_messages = 400")
    steps(w, 4)
    assert w.sizer.target == 100 and sum(num for num, _ in consumer.consumed) == 400
