"""Kafka into the scratch tables: error records into ``audit_err``, source records into ``audit_item``, by COPY.

Both loops touch every record once, so they are written for speed: the ``kapow-*`` headers are picked by hand
(no full decode), labels and per-destination column runs are remembered (bounded), and lines are written to
``COPY`` in blocks. Python holds no per-record state; filtered records are only counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg

from kapow.audit.asks import FILTERED, Ask, Asker
from kapow.audit.scratch import P_PARKED, P_PURGED, P_REPUBLISHED, P_USER
from kapow.config import Config
from kapow.deadletter.done import Action, Handled
from kapow.deadletter.publisher import H_DESTINATION, H_OFFSET, H_PARTITION, H_TOPIC, safe_headers
from kapow.deadletter.reader import TopicReader
from kapow.deadletter.records import H_ORIGIN, label_of, parse_origin

_BLOCK = 2000  # lines per COPY write
_CACHE_LIMIT = 10_000
_PRIO = {Action.NONE: P_PARKED, Action.PURGED: P_PURGED, Action.REPUBLISHED: P_REPUBLISHED}
Progress = Callable[[int, int], None]


def esc(raw: bytes) -> bytes:
    """COPY text format: backslash, newline, carriage return and tab escaped, and a NUL (which no text value may
    hold: a destination named with one made the whole audit fail) as the six characters ``\\u0000``."""
    if b"\\" in raw:
        raw = raw.replace(b"\\", b"\\\\")
    if b"\x00" in raw:
        raw = raw.replace(b"\x00", b"\\\\u0000")
    for special, escaped in ((b"\n", b"\\n"), (b"\r", b"\\r"), (b"\t", b"\\t")):
        if special in raw:
            raw = raw.replace(special, escaped)
    return raw


@dataclass(slots=True)
class PartitionCount:
    total: int = 0
    filtered: int = 0


@dataclass(slots=True)
class TopicPlan:
    """What is audited of one topic: [start, end) per partition and the group's committed offsets."""

    index: int
    topic: str
    spans: dict[int, tuple[int, int]]
    committed: dict[int, int]
    counts: dict[int, PartitionCount] = field(default_factory=dict)


class Feeder:
    """Copies Kafka records into the scratch session's tables."""

    def __init__(self, conn: psycopg.Connection[Any], plans: list[TopicPlan],
                 databases: dict[tuple[str, str], int], progress: Progress | None = None, *,
                 config: Config | None = None) -> None:
        self._conn = conn
        self._plans = {plan.topic: plan for plan in plans}
        self._databases = databases
        self._progress = progress
        self._labels: dict[bytes, bytes] = {}
        self._runs: dict[Ask, bytes] = {}
        self._asker = Asker(config)
        self.read = 0
        self.to_read = sum(e - s for plan in plans for s, e in plan.spans.values() if e > s)

    # ------------------------------------------------------------------ error records
    def errors(self, reader: TopicReader, topic: str, handled: Handled | None) -> None:
        """One ``audit_err`` row per error record naming an audited source record; ``handled`` None: user errors."""
        plans = self._plans
        with self._conn.cursor() as cur, cur.copy(b"COPY audit_err (t, p, o, dest, prio) FROM STDIN") as copy:
            lines: list[bytes] = []
            for msg in reader.read(topic, reader.watermarks(topic)):
                src_topic: bytes | None = None
                src_part: bytes | None = None
                src_off: bytes | None = None
                dest: bytes | None = None
                headers: list[tuple[str, bytes | None]] = msg.headers() or []  # type: ignore[assignment]
                for k, v in headers:
                    if v is None:
                        continue
                    if k == H_TOPIC:
                        src_topic = v
                    elif k == H_PARTITION:
                        src_part = v
                    elif k == H_OFFSET:
                        src_off = v
                    elif k == H_DESTINATION:
                        dest = v
                plan = plans.get(src_topic.decode("utf-8", "replace")) if src_topic else None
                if plan is None or src_part is None or src_off is None:
                    continue
                try:
                    p, o = int(src_part), int(src_off)
                except ValueError:
                    continue
                span = plan.spans.get(p)
                if span is None or not span[0] <= o < span[1]:
                    continue
                where = (msg.partition() or 0, msg.offset() or 0)
                prio = P_USER if handled is None else _PRIO[handled.action(*where)]
                label = self._label(dest) if dest is not None else b"\\N"
                lines.append(b"%d\t%d\t%d\t%b\t%d\n" % (plan.index, p, o, label, prio))
                if len(lines) >= _BLOCK:
                    copy.write(b"".join(lines))
                    lines.clear()
            copy.write(b"".join(lines))

    def _label(self, destination: bytes) -> bytes:
        label = self._labels.get(destination)
        if label is None:
            try:
                found = msgspec.json.decode(destination)
            except (msgspec.DecodeError, UnicodeDecodeError):
                found = None
            label = esc(label_of(found if isinstance(found, dict) else None).encode()) or b"\\N"
            if len(self._labels) < _CACHE_LIMIT:
                self._labels[destination] = label
        return label

    # ------------------------------------------------------------------ source records
    def sources(self, reader: TopicReader, plan: TopicPlan) -> None:
        """One ``audit_item`` row per (packet, destination) of the topic's spans; filtered records only counted."""
        asker, counts, t = self._asker, plan.counts, plan.index
        # at or past this offset a record is pending (the whole partition when the group has committed nothing)
        pending_from = {p: max(plan.committed.get(p, -1), 0) for p in plan.spans}
        for p in plan.spans:
            counts.setdefault(p, PartitionCount())
        seq = self.read
        with self._conn.cursor() as cur, cur.copy(b"COPY audit_item FROM STDIN") as copy:
            lines: list[bytes] = []
            for batch, _live in reader.batches(plan.topic, plan.spans, undecodable=True):
                for msg in batch:
                    p, o = msg.partition() or 0, msg.offset() or 0
                    count = counts[p]
                    count.total += 1
                    headers = safe_headers(msg)
                    # a record of a batch no client can decompress: the writer made it an `undecodable` user error
                    asked = None if msg.error() is not None else asker.ask(plan.topic, headers, msg.value(), msg.key())
                    if asked is FILTERED:
                        count.filtered += 1
                        continue
                    head = b"%d\t%d\t%d\t%d\t%b\t%b\t" % (t, p, o, msg.timestamp()[1],
                                                               b"t" if o >= pending_from[p] else b"f",
                                                               self._origin(headers, t, p, o))
                    if asked is None:
                        seq += 1
                        lines.append(b"%d\t%b\t-1\t\t\t\t0\t\\N\n" % (seq, head))
                    else:
                        keydoc = esc(asked.keydoc)
                        for ask in asked.asks:
                            seq += 1
                            lines.append(b"%d\t%b%b\t%b\n" % (seq, head, self._run(ask), keydoc))
                if len(lines) >= _BLOCK:
                    copy.write(b"".join(lines))
                    lines.clear()
                self.read += len(batch)
                if self._progress is not None:
                    self._progress(self.read, self.to_read)
            copy.write(b"".join(lines))

    def _origin(self, headers: list[tuple[str, bytes | None]], t: int, p: int, o: int) -> bytes:
        """``ot\top\too``: the record's ``kapow-origin`` when it is a republished copy, else the record itself."""
        for k, v in headers:
            if k == H_ORIGIN and v is not None:
                found = parse_origin(v.decode("utf-8", "replace"))
                if found is not None:
                    plan = self._plans.get(found[0])
                    if plan is not None:
                        return b"%d\t%d\t%d" % (plan.index, found[1], found[2])
        return b"%d\t%d\t%d" % (t, p, o)

    def _run(self, ask: Ask) -> bytes:
        """``dest\tdb\tsch\ttbl\tkcols\tmode`` for one destination (remembered: packets repeat them)."""
        run = self._runs.get(ask)
        if run is None:
            db = self._databases.get((ask.vanity, ask.database), -1)
            run = b"%b\t%d\t%b\t%b\t%b\t%d" % (esc(ask.label.encode()), db, esc(ask.schema.encode()),
                                              esc(ask.table.encode()), esc(",".join(ask.key).encode()),
                                              ask.code)
            if len(self._runs) < _CACHE_LIMIT:
                self._runs[ask] = run
        return run

