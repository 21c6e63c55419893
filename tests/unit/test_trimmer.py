"""When the writer gives large packets' memory back to the system (:class:`kapow.pipeline.process.Trimmer`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kapow.pipeline.process import Trimmer, trim_memory

KIB, MIB = 1024, 1024 * 1024


def counting() -> tuple[Trimmer, list[int]]:
    calls: list[int] = []
    return Trimmer(trim=lambda: calls.append(1) or True), calls


def test_glibc_trims_on_this_machine() -> None:
    assert trim_memory(), "malloc_trim resolved and answered (the writer relies on it after large packets)"


def test_large_packets_let_go_a_few_at_a_time_add_up_to_a_trim() -> None:
    """The per-unit rule this replaced never trimmed 400 packets of 0.9 MB answered four at a time (RSS +305 MB)."""
    trimmer, calls = counting()
    for _ in range(9):  # 9 x 0.9 MB: not yet 8 MiB
        trimmer.freed(900_000, 1)
        assert trimmer.settle() is False
    trimmer.freed(900_000, 1)
    assert trimmer.settle() is True and calls == [1] and trimmer.pending == 0
    assert trimmer.settle() is False and calls == [1], "nothing let go since: no second trim"


def test_small_rows_never_count_however_many() -> None:
    trimmer, calls = counting()
    for _ in range(10_000):
        trimmer.freed(10 * 2_000, 10)  # ten 250 B packets with their overhead
    assert trimmer.pending == 0 and trimmer.settle() is False and calls == []


def test_a_work_counts_by_its_bytes_per_row_and_a_rowless_record_as_one() -> None:
    trimmer, _calls = counting()
    trimmer.freed(64 * KIB * 10, 10)  # exactly at the line: not large
    trimmer.freed(64 * KIB * 10 + 1, 10)
    trimmer.freed(100 * KIB, 0)  # an error record: no row, one packet
    assert trimmer.pending == 64 * KIB * 10 + 1 + 100 * KIB


def test_rows_whose_error_records_still_hold_them_count_when_those_are_acknowledged() -> None:
    trimmer, _calls = counting()
    trimmer.freed(4 * 900_000, 4, failed=1)  # one of the four packets waits for its error record's ack
    assert trimmer.pending == 3 * 900_000
    trimmer.freed(900_000, 1)  # the ack
    assert trimmer.pending == 4 * 900_000


@given(st.lists(st.tuples(st.integers(0, 4 * MIB), st.integers(0, 50)), max_size=200))
def test_trims_follow_every_8_mib_of_large_packets(frees: list[tuple[int, int]]) -> None:
    trimmer, calls = counting()
    large = 0
    for nbytes, rows in frees:
        trimmer.freed(nbytes, rows)
        large += nbytes if nbytes > 64 * KIB * max(rows, 1) else 0
        trimmer.settle()
    assert len(calls) * 8 * MIB <= large - trimmer.pending, "a trim only after 8 MiB more were let go"
    assert (len(calls) > 0) == (large >= 8 * MIB), "and never more than 8 MiB let go without one"
