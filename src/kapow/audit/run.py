"""``audit(config)``: account for every record of the input topics, as ``kapow audit`` and ``GET /api/audit`` do.

The reads happen in an order that makes the answer sound on a live system: first the end of each source
partition and the group's committed offsets, then the error topics and the ``.done`` markers, to their ends at
that later moment. An error record is acknowledged before the writer commits past its packet, so every record
below a committed offset that failed has its error record among what is read; a record at or past the committed
offset with no error record is ``pending``. Rows are looked at last: a row that a record below the committed
offset wrote is there by then, unless something removed it.

Precedence, per destination of a record: an error record (user error, parked, purged, or republished: then the
record's copies decide, and with no copy in range the row does), else pending (at or past the committed offset),
else the row (landed, or missing). A record takes the worst fate of its destinations: missing, pending, parked,
purged, user_errors, landed (so it is landed only when landed in every destination).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from kapow.audit import checks, scratch
from kapow.audit.feed import Feeder, TopicPlan
from kapow.audit.report import AuditReport, Missing, PartitionReport
from kapow.config import Config, DestinationConfig
from kapow.contract import shorten
from kapow.deadletter.done import read_handled
from kapow.deadletter.reader import TopicReader, open_reader
from kapow.errors import KapowError, one_line

Progress = Callable[[int, int], None]


class BadRange(KapowError):
    """The range to audit names something that does not exist (a topic, a partition) or is malformed."""


class Databases:
    """The configured (vanity, database) pairs, indexed in config order, and connections to them on demand."""

    def __init__(self, config: Config) -> None:
        self.pairs: list[tuple[DestinationConfig, str]] = [(d, db) for d in config.destinations for db in d.databases]
        self.index = {(d.vanity, db): i for i, (d, db) in enumerate(self.pairs)}
        self._open: dict[int, psycopg.Connection[Any]] = {}

    def name(self, i: int) -> str:
        dest, database = self.pairs[i]
        return f"{dest.vanity}/{database}"

    def connect(self, i: int) -> psycopg.Connection[Any]:
        conn = self._open.get(i)
        if conn is None:
            dest, database = self.pairs[i]
            pw = dest.password()
            conninfo = make_conninfo(dest.conninfo(database), application_name="kapow-audit",
                                     **({"password": pw} if pw else {}))
            try:
                conn = psycopg.connect(conninfo, autocommit=True)
            except psycopg.Error as exc:
                raise KapowError(f"cannot reach {self.name(i)} at {dest.host}:{dest.port}: {one_line(exc)}") from None
            self._open[i] = conn
        return conn

    def scratch(self, prefer: str | None = None) -> int:
        """The database whose temporary tables hold the audit: ``prefer`` (vanity/database), else the first that
        answers, in config order."""
        order = list(range(len(self.pairs)))
        if prefer:
            order = [i for i in order if self.name(i) == prefer]
            if not order:
                raise KapowError(f"scratch database {prefer!r} is not configured (use vanity/database)")
        reasons = []
        for i in order:
            try:
                self.connect(i)
                return i
            except KapowError as exc:
                reasons.append(str(exc))
        raise KapowError(f"no destination database answers for the audit's work tables: {'; '.join(reasons)}")

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()
        self._open.clear()


def parse_offsets(text: str) -> dict[int, int]:
    """``P:O,P:O`` -> {partition: offset}."""
    out: dict[int, int] = {}
    for part in text.split(","):
        p, sep, o = part.strip().partition(":")
        if not (sep and p.isdigit() and o.isdigit()):
            raise BadRange(f"--from-offsets: {part.strip()!r} is not PARTITION:OFFSET (e.g. 0:1200,1:980)")
        out[int(p)] = int(o)
    return out


def _plan(reader: TopicReader, index: int, topic: str, group: str, since_ms: int | None,
          from_offsets: dict[int, int] | None) -> TopicPlan:
    partitions = reader.partitions(topic)
    if partitions is None:
        raise BadRange(f"topic {topic} does not exist at Kafka {reader.bootstrap}")
    marks = reader.watermarks(topic, partitions)
    starts = {p: low for p, (low, _high) in marks.items()}
    if since_ms is not None and since_ms > 0:  # (negative timestamps mean "latest"/"earliest" to Kafka)
        for p, off in reader.offsets_for_time(topic, partitions, since_ms).items():
            starts[p] = marks[p][1] if off < 0 else max(off, marks[p][0])
    if from_offsets:
        unknown = sorted(set(from_offsets) - set(partitions))
        if unknown:
            raise BadRange(f"--from-offsets: topic {topic} has no partition {unknown[0]}")
        for p, off in from_offsets.items():  # with since too: the later of the two
            starts[p] = max(starts[p], min(max(off, marks[p][0]), marks[p][1]))
    spans = {p: (starts[p], marks[p][1]) for p in partitions}
    return TopicPlan(index, topic, spans, reader.committed(group, topic, partitions))


def audit(config: Config, *, topic: str | None = None, since_ms: int | None = None,
          from_offsets: dict[int, int] | None = None, progress: Progress | None = None, examples: int = 10,
          scratch_database: str | None = None) -> AuditReport:
    """Sort every record of the input topics (or ``topic``, from ``since_ms`` or ``from_offsets``) into exactly one
    category; see the module docstring for the rules and :class:`AuditReport` for the answer."""
    started = time.monotonic()
    k = config.kafka
    topics = [topic] if topic else list(config.consumed_topics)
    if from_offsets and len(topics) != 1:
        raise BadRange("--from-offsets needs one topic: name it with --topic")
    databases = Databases(config)
    phases: dict[str, float] = {}
    try:
        with open_reader(k.bootstrap_servers, k.settings) as reader:
            plans = [_plan(reader, i, t, k.group_id, since_ms, from_offsets) for i, t in enumerate(topics)]
            home = databases.scratch(scratch_database)
            conn = databases.connect(home)
            scratch.prepare(conn)
            feeder = Feeder(conn, plans, databases.index, progress, config=config)
            system_marks = reader.watermarks(k.system_errors_topic)
            handled = read_handled(reader, k.system_errors_topic, system_marks)
            feeder.errors(reader, k.system_errors_topic, handled)
            feeder.errors(reader, k.user_errors_topic, None)
            phases["errors_s"] = time.monotonic() - started
            for plan in plans:
                feeder.sources(reader, plan)
            phases["sources_s"] = time.monotonic() - started - phases["errors_s"]
        mark = time.monotonic()
        groups = scratch.join_evidence(conn)
        phases["join_s"] = time.monotonic() - mark
        mark = time.monotonic()
        for db in sorted({g[1] for g in groups}):
            try:
                target = None if db == home else databases.connect(db)
            except KapowError:
                if scratch.needs_rows(conn, db):
                    raise
                continue  # only republished records go there: their copies decide, else they stay pending
            checks.check_database(conn, target, db, [(g, s, t, kc) for g, d, s, t, kc in groups if d == db])
        phases["rows_s"] = time.monotonic() - mark
        mark = time.monotonic()
        counts, missing = scratch.resolve(conn, examples)
        phases["resolve_s"] = time.monotonic() - mark
    except psycopg.Error as exc:  # lost connection, no TEMP privilege, disk full: one line, never a traceback
        raise KapowError(f"audit: a destination database failed: {one_line(exc)}") from None
    finally:
        databases.close()
    report = AuditReport(group=k.group_id, scratch=databases.name(home) if databases.pairs else "")
    by_key: dict[tuple[int, int], PartitionReport] = {}
    for plan in plans:
        for p, (start, end) in sorted(plan.spans.items()):
            counted = plan.counts.get(p)
            row = PartitionReport(plan.topic, p, start, end, plan.committed.get(p, -1),
                                  total=counted.total if counted else 0, filtered=counted.filtered if counted else 0)
            report.partitions.append(row)
            by_key[(plan.index, p)] = row
    for t, p, fate, n, unverified in counts:
        row = by_key[(t, p)]
        setattr(row, scratch.FATES[fate], getattr(row, scratch.FATES[fate]) + n)
        row.unverified += unverified
    report.missing_examples = [Missing(topics[t], p, o, shorten(why, 2000)) for t, p, o, why in missing]
    report.elapsed_s = time.monotonic() - started
    report.phases = {k: round(v, 2) for k, v in phases.items()}
    return report
