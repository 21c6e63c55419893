"""When the writer gives large packets' memory back to the system (:class:`kapow.pipeline.process.Trimmer`)."""

from __future__ import annotations

from confluent_kafka import Message
from hypothesis import given
from hypothesis import strategies as st

from kapow.config import parse_config
from kapow.contract import CONTEXT_VALUE
from kapow.errors import ErrorCode, Failure, Scope
from kapow.pipeline.process import Trimmer, trim_memory
from kapow.pipeline.sort import Sorter
from kapow.pipeline.work import LARGE_PACKET, PACKET_OVERHEAD, ErrorRecord, WorkResult, record_bytes
from tests.unit.test_runner import CONFIG, packet

MIB = 1024 * 1024


def counting() -> tuple[Trimmer, list[int]]:
    calls: list[int] = []
    return Trimmer(trim=lambda: calls.append(1) or True), calls


def message(value: bytes, offset: int = 0) -> Message:
    return Message(topic="in", partition=0, offset=offset, key=None, value=value,
                   headers=[("context", CONTEXT_VALUE)], timestamp=(1, 1))


def test_glibc_trims_on_this_machine() -> None:
    assert trim_memory(), "malloc_trim resolved and answered (the writer relies on it after large packets)"


def test_large_packets_let_go_a_few_at_a_time_add_up_to_a_trim() -> None:
    """The per-unit rule this replaced never trimmed 400 packets of 0.9 MB answered four at a time (RSS +305 MB)."""
    trimmer, calls = counting()
    for _ in range(9):  # 9 x 0.9 MB: not yet 8 MiB
        trimmer.freed(900_000)
        assert trimmer.settle() is False
    trimmer.freed(900_000)
    assert trimmer.settle() is True and calls == [1] and trimmer.pending == 0
    assert trimmer.settle() is False and calls == [1], "nothing let go since: no second trim"
    trimmer.freed(MIB)
    assert trimmer.settle() is False and trimmer.settle(idle=True) is True, "idle: 1 MiB is enough"


def test_sort_counts_each_large_packet_by_itself_in_a_table_of_mostly_small_ones() -> None:
    """A work's average hid 300 rows of 0.9 MB among 20,000 small ones of one table: 92 MB stayed untrimmed."""
    big = packet("t", 0)[:-2] + b', "pad": "' + b"x" * 900_000 + b'"}}'
    msgs = [message(packet("t", i), i) for i in range(1, 2000)] + [message(big, 2000)]
    _batch, works = Sorter(parse_config(CONFIG.format(extra=""))).sort(1, msgs)
    (work,) = works
    assert work.large == record_bytes(msgs[-1]) == len(big) + len("context") + len(CONTEXT_VALUE) + PACKET_OVERHEAD
    assert work.large > LARGE_PACKET
    assert work.nbytes < LARGE_PACKET * len(work.rows), "on average a small row: the old rule counted nothing"
    trimmer, _calls = counting()
    trimmer.answered(WorkResult(work, landed=2000))
    assert trimmer.pending == work.large


def test_failed_large_packets_count_when_their_error_records_are_acknowledged() -> None:
    big = b"x" * 900_000
    _batch, works = Sorter(parse_config(CONFIG.format(extra=""))).sort(
        1, [message(packet("t", i)[:-2] + b', "pad": "' + big + b'"}}', i) for i in range(4)])
    (work,) = works
    failed = ErrorRecord(work.rows[0].msg, Failure(ErrorCode.BAD_VALUE, "no", Scope.ROW), None)
    trimmer, _calls = counting()
    trimmer.answered(WorkResult(work, landed=3, failed=[failed]))
    size = record_bytes(work.rows[0].msg)
    assert trimmer.pending == work.large - size
    trimmer.acked(size)
    assert trimmer.pending == work.large
    trimmer.acked(2_000)  # a small record's ack never counts
    assert trimmer.pending == work.large


@given(st.lists(st.integers(0, 4 * MIB), max_size=200))
def test_trims_follow_every_8_mib_of_large_packets(frees: list[int]) -> None:
    trimmer, calls = counting()
    for nbytes in frees:
        trimmer.freed(nbytes)
        trimmer.settle()
    assert len(calls) * 8 * MIB <= sum(frees) - trimmer.pending, "a trim only after 8 MiB more were let go"
    assert (len(calls) > 0) == (sum(frees) >= 8 * MIB), "and never more than 8 MiB let go without one"
