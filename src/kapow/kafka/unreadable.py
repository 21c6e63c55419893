"""Step over record batches that librdkafka cannot decompress, so that one client's batch never stalls a partition.

A producer may compress a batch that decompresses past ``receive.message.max.bytes`` (100 MB by default: ~300
records of 1 MB of one letter fit in one 13 kB zstd batch), or send one that is corrupt. librdkafka then reports
``_BAD_COMPRESSION`` at the batch's first offset, backs off and fetches the same batch again, forever: every
packet behind it on that partition, of every team, waited, and the warning repeated twice a second. Memory is
not the problem (librdkafka refuses to decompress past the bound); the stall is.

librdkafka does not say where the batch ends, and the writer must not skip a readable record. So the end is found
by seeking: a fetch from any offset inside the batch fails again with the batch's first offset, and a fetch from
past its end yields a readable record or another batch's error. The end lies below the high watermark, so a
binary search between the two finds it in log2(distance) fetches (records read while searching are dropped:
they are consumed again from the batch's end). Each offset of the batch then becomes one ``undecodable`` record
on the user-errors topic (its topic, partition and offset in the headers, no value), committed like any other,
and the partition goes on from the batch's end.

A probe is sought again when no answer comes within :data:`PROBE_TIMEOUT_S` (doubled each time; the clock stops
while the writer has paused its partitions), and only after :data:`PROBE_TRIES` unanswered seeks does it count
as past the end. That can only split the batch's error records into runs (the search starts again from where
it stopped), never skip a record: every search starts from the batch's first offset, which its error proves is
in it, and what was already reported (by this writer, or committed by the partition's previous owner) is not
reported again. An
answer from before a seek is never taken for an answer to it: librdkafka drops a partition's fetched records and
errors once it is sought (its op version barrier), and those already handed over in the same consume (the
readable batches behind the undecodable one, in the same fetch) are dropped here.

Owned by the writer's loop and used by its thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from operator import is_not
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from kapow.errors import ErrorCode, Failure, Scope

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
PROBE_TRIES = 4  # 2 + 4 + 8 + 16 s unanswered before a probe counts as past the end
RESEEK_S = 1.0  # a refused seek is tried again after this
MAX_REASON = 300

TP = tuple[str, int]


class Stepped(NamedTuple):
    """One offset of an undecodable batch: a record with no value, and why (the writer's error record of it)."""

    msg: Message
    failure: Failure


@dataclass(slots=True)
class _Search:
    base: int  # the batch's first offset, as librdkafka reports it
    first: int  # the first offset not yet reported (the base, or where an earlier search of it stopped)
    inside: int  # the highest offset known to be in the batch
    outside: int  # the lowest offset known to be past it
    reason: str
    probe: int = -1
    sent: float = 0.0  # monotonic time of the probe's seek
    end: int | None = None  # the batch's last offset, once found
    seek_failed: bool = False  # the last seek was refused: tried again by tick()
    tries: int = 0  # seeks of the current probe left unanswered
    failure: Failure | None = None


class Unreadable:
    """Finds where an undecodable batch ends and turns its offsets into error records; ``consumer()`` is the
    writer's consumer (None before it exists)."""

    def __init__(self, consumer: Callable[[], Any], *, start: Callable[[TP], int | None] = lambda _tp: None,
                 paused: Callable[[], bool] = lambda: False, errors_log: logging.Logger = log) -> None:
        self._consumer = consumer
        self._errors_log = errors_log  # the other consumer errors: the writer logs them as its own
        self._start = start  # the partition's committed (or starting) offset: reported before, by its last owner
        self._paused = paused
        self._searches: dict[TP, _Search] = {}
        self._sought: set[TP] = set()  # partitions sought while the current split() runs
        # per partition, (base, next offset) of the last batch reported: a rewind or a run cut short by a timeout
        # meets the same batch again, and what was reported is not reported twice
        self._resumed: dict[TP, tuple[int, int]] = {}

    @property
    def searching(self) -> bool:
        return bool(self._searches)

    def holds(self, tp: TP) -> bool:
        """True while ``tp`` is being searched or its batch reported (its records are dropped meanwhile)."""
        return tp in self._searches

    def split(self, msgs: list[Message]) -> list[Message]:
        """The records to handle now: readable ones of partitions not being searched. Errors are logged (fatal
        ones raise); undecodable batches start or answer a search."""
        searches = self._searches
        self._sought.clear()
        if not searches and not any(map(is_not, [m.error() for m in msgs], repeat(None))):
            return msgs  # the usual batch: no error, no search, so every record is handled (no copy)
        good: list[Message] = []
        for msg in msgs:
            err = msg.error()
            if self._sought and (msg.topic() or "", msg.partition() or 0) in self._sought:
                continue  # fetched before this call's seek of its partition: no answer to the new position
            if err is None:
                if not searches or not self._answered_by(msg):
                    good.append(msg)
            elif err.fatal():
                raise KafkaException(err)
            elif err.code() == KafkaError._BAD_COMPRESSION and msg.topic() is not None and msg.partition() is not None:
                self._failed(msg, err.str())
            elif err.code() == KafkaError._PARTITION_EOF:
                if searches:
                    self._answered_by(msg)  # the end of the partition at or past the probe: past the batch
            else:
                self._errors_log.warning("consumer: %s", err)
        return good

    def take(self, limit: int) -> list[Stepped]:
        """Up to ``limit`` error records of batches whose end was found, one per offset, in offset order.

        A batch of millions of tiny records is reported a step at a time, so what the writer holds stays
        bounded; its partition is sought past it only once the last of them is taken, so that no later record
        of that partition can be committed before them.
        """
        records: list[Stepped] = []
        for tp, search in list(self._searches.items()):
            if search.end is None or search.failure is None:
                continue
            last = min(search.end, search.first + limit - len(records) - 1)
            records += [Stepped(Message(topic=tp[0], partition=tp[1], offset=offset, value=None, timestamp=(0, -1)),
                                search.failure) for offset in range(search.first, last + 1)]
            search.first = last + 1
            if search.first > search.end:
                self._leave(tp, search)
            if len(records) >= limit:
                break
        return records

    def tick(self, now: float | None = None) -> None:
        """A probe left unanswered is sought again, with a doubling wait, and after :data:`PROBE_TRIES` counts as
        past the batch's end (see the module's docstring); a refused seek is tried again after :data:`RESEEK_S`."""
        now = time.monotonic() if now is None else now
        paused = self._paused()
        for tp, search in list(self._searches.items()):
            waited = now - search.sent
            if search.end is not None:
                if search.first > search.end and waited >= RESEEK_S:
                    self._leave(tp, search)
            elif search.seek_failed:
                if waited >= RESEEK_S:
                    self._probe(tp, search)
            elif paused:
                search.sent = now  # nothing is fetched while paused: no answer is late
            elif waited >= PROBE_TIMEOUT_S * 2 ** search.tries:
                if search.tries + 1 < PROBE_TRIES:
                    search.tries += 1
                    self._probe(tp, search, again=True)
                else:
                    self._past(tp, search, search.probe)

    def forget(self, gone: set[TP]) -> None:
        """Partitions revoked or lost: their searches end (the next owner meets the batch again)."""
        for tp in gone:
            self._searches.pop(tp, None)
            self._resumed.pop(tp, None)

    # ------------------------------------------------------------------ the consumer
    def _seek(self, topic: str, partition: int, offset: int) -> bool:
        consumer = self._consumer()
        if consumer is None:
            return False
        self._sought.add((topic, partition))
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            log.warning("consumer seek of %s[%s] to %d: %s", topic, partition, offset, exc)
            return False
        return True

    def _high(self, topic: str, partition: int) -> int | None:
        """The high watermark: the one the failed fetch brought, else asked of the broker (rare: one error)."""
        consumer = self._consumer()
        if consumer is None:
            return None
        tp = TopicPartition(topic, partition)
        try:
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high is None or high < 0:
                _low, high = consumer.get_watermark_offsets(tp, timeout=2.0)
        except KafkaException as exc:
            log.warning("high watermark of %s[%s]: %s", topic, partition, exc)
            return None
        return int(high) if high is not None and high >= 0 else None

    # ------------------------------------------------------------------ the search
    def _failed(self, msg: Message, reason: str) -> None:
        tp = (msg.topic() or "", msg.partition() or 0)
        base = msg.offset() or 0
        search = self._searches.get(tp)
        if search is not None and search.end is not None:
            return  # found; its records are being reported
        if search is None:
            resumed = self._resumed.get(tp)
            reported = resumed[1] if resumed is not None and resumed[0] == base else base
            high = self._high(*tp)
            if high is None or high <= base:  # not known yet: stay where we are (librdkafka fetches again)
                log.warning("consumer: %s (high watermark unknown: searching for its end later)", reason)
                return
            start = self._start(tp)
            if start is None or start > high:  # a committed offset past the log's end (a truncated log): ignored
                start = base
            first = max(base, reported, start)
            search = self._searches[tp] = _Search(base, first, base, high, reason[:MAX_REASON])
            log.warning("consumer: %s; finding where that batch ends to step over it", reason)
            self._next(tp, search)
        elif base == search.base:
            if not search.seek_failed:  # the fetch from the probe met the batch again: the probe is inside it
                search.inside = max(search.inside, search.probe)
            self._next(tp, search)
        elif base > search.base:  # the probe fell in a later undecodable batch: past this one's end
            self._past(tp, search, min(base, search.probe))

    def _answered_by(self, msg: Message) -> bool:
        """True when ``msg`` (a record, or the partition's end: a probe that met only a transaction marker gets
        no other answer) belongs to a partition being searched; it is dropped (read again later)."""
        tp = (msg.topic() or "", msg.partition() or 0)
        search = self._searches.get(tp)
        if search is None:
            return False
        if search.end is None and not search.seek_failed and (msg.offset() or 0) >= search.probe:
            # a readable record at or past the probe: the probe is past the batch's end
            self._past(tp, search, search.probe)
        return True

    def _past(self, tp: TP, search: _Search, offset: int) -> None:
        if offset <= search.inside:
            return
        search.outside = min(search.outside, offset)
        self._next(tp, search)

    def _next(self, tp: TP, search: _Search) -> None:
        if search.outside - search.inside <= 1:
            self._done(tp, search)
            return
        search.probe = (search.inside + search.outside + 1) // 2
        self._probe(tp, search)

    def _probe(self, tp: TP, search: _Search, *, again: bool = False) -> None:
        if not again:
            search.tries = 0
        search.sent = time.monotonic()
        search.seek_failed = not self._seek(tp[0], tp[1], search.probe)

    def _leave(self, tp: TP, search: _Search) -> None:
        """Every record of the batch is reported: the partition goes on from its end (its records until then are
        dropped, so none past the batch is handled before the seek is taken)."""
        assert search.end is not None
        if self._seek(tp[0], tp[1], search.end + 1):
            del self._searches[tp]
        else:
            search.sent = time.monotonic()  # tried again by tick() after RESEEK_S

    def _done(self, tp: TP, search: _Search) -> None:
        last = search.end = search.inside
        self._resumed[tp] = (search.base, last + 1)
        if search.first > last:  # every offset of it was reported before (a rewind, a new owner): go on
            self._leave(tp, search)
            return
        search.failure = Failure(
            ErrorCode.UNDECODABLE,
            f"offsets {search.first}-{last} of {tp[0]}[{tp[1]}] are one record batch that cannot be read "
            f"({search.reason}); a compressed batch may decompress to at most receive.message.max.bytes (100 MB by "
            "default): produce smaller batches", Scope.ROW)
        log.warning("stepping over %d undecodable records of %s[%s] (offsets %d-%d)", last - search.first + 1,
                    tp[0], tp[1], search.first, last)
