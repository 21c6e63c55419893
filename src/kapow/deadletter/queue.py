"""The dead-letter queue: list, show, summarise, reschedule and purge the records parked on the system-errors topic.

Kafka cannot delete one record from the middle of a topic, so handled records get a marker on a compacted
companion topic, ``<system-errors>.done`` (:mod:`kapow.deadletter.done`); a record with a marker never shows
again, also after a restart or from another process. Rescheduling republishes the original key, value and headers
to the source topic (``kapow-attempt`` plus one, ``kapow-origin`` kept or set) and writes the marker in the same
Kafka transaction (:mod:`kapow.deadletter.mover`): a crash never reschedules a record twice.

Every call reads the topic afresh and streams it: memory is one page, one chunk and one byte per offset of the
topic (the markers), never the queue itself, so a million parked records are listed, summarised, rescheduled or
purged in bounded memory. **One order everywhere** (CLI, API, console): oldest first, by failure time
(``kapow-failed-at``), then partition and offset; a page ends with a cursor, the id of its last record, and
``after=<id>`` continues from there (the order depends on the topic's content alone, so the cursor holds).

Both ``kapow dlq`` and the HTTP API use this one class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kapow.deadletter.done import Handled, read_handled
from kapow.deadletter.mover import Mover, Outcome, Verb, reschedulable
from kapow.deadletter.reader import TopicReader, open_reader
from kapow.deadletter.records import DlqFilter, DlqRecord, Trimmed, decode_record, failed_at_ms, trim
from kapow.errors import KapowError
from kapow.kafka.clients import Settings

Progress = Callable[[int, int], None]  # (records read, records to read)
MAX_FACETS = 200  # distinct codes / destinations counted per page (the rest under "…")


class UnknownRecord(KapowError):
    """An id that names no record of the queue (as ``after`` cursor, or to show or act on)."""


@dataclass(slots=True)
class Summary:
    """Counts of the parked records, by code, destination and both (``kapow dlq stats``)."""

    parked: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    destinations: dict[str, int] = field(default_factory=dict)
    pairs: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # -> [count, oldest ms, newest ms]

    def add(self, r: DlqRecord) -> None:
        self.parked += 1
        where = r.label or "-"
        for facet, key in ((self.codes, r.code), (self.destinations, where)):
            if key in facet or len(facet) < MAX_FACETS:
                facet[key] = facet.get(key, 0) + 1
            else:
                facet["…"] = facet.get("…", 0) + 1
        pair = self.pairs.get((r.code, where))
        if pair is None:
            if len(self.pairs) >= MAX_FACETS:
                return
            self.pairs[(r.code, where)] = [1, r.failed_at_ms, r.failed_at_ms]
        else:
            pair[0] += 1
            pair[1] = min(pair[1], r.failed_at_ms)
            pair[2] = max(pair[2], r.failed_at_ms)


@dataclass(slots=True)
class Page:
    """One page of matching parked records (oldest first), with the counts of the whole queue."""

    records: list[Trimmed]
    total: int  # records matching the filter
    summary: Summary  # every parked record
    next_after: str | None  # the cursor for the next page; None when this one is the last


class DeadLetterQueue:
    """Operations on one system-errors topic; every call reads the topic afresh (nothing is cached)."""

    def __init__(self, bootstrap: str, topic: str, *, settings: Settings | None = None,
                 timeout: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.done_topic = f"{topic}.done"
        self._settings = dict(settings or {})
        self._timeout = timeout

    def exists(self) -> bool:
        """Whether the topic exists: a name mistyped must not read as an empty queue."""
        with self._reader() as reader:
            return reader.partitions(self.topic) is not None

    def _reader(self) -> TopicReader:
        return open_reader(self.bootstrap, self._settings, idle_timeout=min(self._timeout, 15.0))

    def _parked(self, reader: TopicReader, *, merged: bool, spans: dict[int, tuple[int, int]] | None = None,
                progress: Progress | None = None) -> Iterator[tuple[str, DlqRecord | None]]:
        """(id, record) for every record of the topic in the queue's order; record is None when handled."""
        watermarks = reader.watermarks(self.topic)
        handled: Handled = read_handled(reader, self.topic, watermarks)
        spans = spans if spans is not None else watermarks
        total = sum(max(0, end - start) for start, end in spans.values())
        msgs = (reader.read_merged(self.topic, spans, failed_at_ms) if merged else reader.read(self.topic, spans))
        for n, msg in enumerate(msgs, 1):
            p, o = msg.partition() or 0, msg.offset() or 0
            rid = f"{p}:{o}"
            yield rid, (None if (p, o) in handled else decode_record(msg))
            if progress is not None and (n % 1000 == 0 or n == total):
                progress(n, total)

    def scan(self, flt: DlqFilter | None = None, *, after: str | None = None) -> Iterator[DlqRecord]:
        """Parked records matching ``flt``, oldest first, starting after the record ``after``."""
        flt = flt or DlqFilter()
        with self._reader() as reader:
            passed = after is None
            for rid, record in self._parked(reader, merged=True, spans=_id_spans(reader, self.topic, flt)):
                if not passed:
                    passed = rid == after
                    continue
                if record is not None and flt.matches(record):
                    yield record
            if not passed:
                raise UnknownRecord(f"no record with id {after} on {self.topic} (the cursor of a listing)")

    def records(self, flt: DlqFilter | None = None) -> list[DlqRecord]:
        """Every matching parked record in a list: for small queues and tests (:meth:`scan` streams)."""
        return list(self.scan(flt))

    def page(self, flt: DlqFilter | None = None, *, limit: int = 100, after: str | None = None, skip: int = 0,
             preview_bytes: int = 240) -> Page:
        """One page of matching records (values cut to ``preview_bytes``), the match count and the summary."""
        flt = flt or DlqFilter()
        summary = Summary()
        out: list[Trimmed] = []
        total = 0
        more = False
        passed = after is None
        with self._reader() as reader:
            for rid, record in self._parked(reader, merged=True):
                if record is None:
                    passed = passed or rid == after
                    continue
                summary.add(record)
                if not flt.matches(record):
                    passed = passed or rid == after
                    continue
                total += 1
                if not passed:
                    passed = rid == after
                elif skip > 0:
                    skip -= 1
                elif len(out) < limit:
                    out.append(trim(record, preview_bytes, headers=False))
                else:
                    more = True
        if not passed:
            raise UnknownRecord(f"no record with id {after} on {self.topic} (the cursor of a listing)")
        return Page(out, total, summary, out[-1].record.id if more and out else None)

    def summary(self) -> Summary:
        with self._reader() as reader:
            summary = Summary()
            for _rid, record in self._parked(reader, merged=False):
                if record is not None:
                    summary.add(record)
            return summary

    def get(self, rid: str) -> DlqRecord | None:
        """One parked record in full (reads that one offset, and the markers); None if there is none."""
        found = list(self.scan(DlqFilter(ids=frozenset({rid}))))
        return found[0] if found else None

    def check_ids(self, ids: list[str], *, verb: Verb) -> None:
        """Refuse, before anything is done, ids that are not parked (404) or cannot be rescheduled (409)."""
        found = {r.id: r for r in self.scan(DlqFilter(ids=frozenset(ids)))}
        missing = sorted(set(ids) - set(found))
        if missing:
            raise UnknownRecord(f"no parked record with id {', '.join(missing[:10])} on {self.topic}")
        if verb is Verb.RESCHEDULE:
            for r in found.values():
                if not r.source_topic:
                    raise CannotReschedule(f"record {r.id} has no kapow-source-topic header; it cannot be "
                                           "rescheduled (purge it instead)")
                if not reschedulable(r):
                    raise CannotReschedule(f"record {r.id} holds only the first {len(r.value or b'')} of its "
                                           f"{r.value_truncated} bytes (kapow-value-truncated); it cannot be "
                                           f"rescheduled: republish the original ({r.origin}) and purge it")

    def move(self, verb: Verb, flt: DlqFilter, progress: Progress | None = None, *,
             chunk_records: int = 500) -> Outcome:
        """Reschedule or purge every parked record matching ``flt``, streaming, a transaction per chunk."""
        with self._reader() as reader:
            mover = Mover(self.bootstrap, self.topic, verb, settings=self._settings, chunk_records=chunk_records,
                          timeout=self._timeout)  # fences an earlier mover *before* the markers are read
            try:
                spans = _id_spans(reader, self.topic, flt)
                for _rid, record in self._parked(reader, merged=False, spans=spans, progress=progress):
                    if record is not None and flt.matches(record):
                        mover.add(record)
                return mover.finish()
            finally:
                mover.close()

    def reschedule(self, target: list[DlqRecord] | DlqFilter | None = None, progress: Progress | None = None) -> int:
        """Republish matching records (a list means its ids) to their source topics; the number rescheduled."""
        return self.move(Verb.RESCHEDULE, _as_filter(target), progress).count

    def purge(self, target: list[DlqRecord] | DlqFilter | None = None, progress: Progress | None = None) -> int:
        return self.move(Verb.PURGE, _as_filter(target), progress).count

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own clients (kept for callers that close)."""


class CannotReschedule(KapowError):
    """A record without ``kapow-source-topic`` was named for a reschedule."""


def _as_filter(target: list[DlqRecord] | DlqFilter | None) -> DlqFilter:
    if isinstance(target, DlqFilter):
        return target
    if target is None:
        return DlqFilter()
    return DlqFilter(ids=frozenset(r.id for r in target))


def _id_spans(reader: TopicReader, topic: str, flt: DlqFilter) -> dict[int, tuple[int, int]] | None:
    """With ids, read only from the smallest to the largest named offset of each partition; else everything."""
    if not flt.ids:
        return None
    wanted: dict[int, tuple[int, int]] = {}
    for rid in flt.ids:
        part, _, off = rid.partition(":")
        if not (part.isdigit() and off.isdigit()):
            continue
        p, o = int(part), int(off)
        lo, hi = wanted.get(p, (o, o + 1))
        wanted[p] = (min(lo, o), max(hi, o + 1))
    marks = reader.watermarks(topic)
    return {p: (max(lo, marks[p][0]), min(hi, marks[p][1])) for p, (lo, hi) in wanted.items() if p in marks}
