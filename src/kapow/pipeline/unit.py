"""Write one unit of work: the queued works of one or many tables of one database, on one connection.

The steps, for every table of the unit: read its shape from the catalog (all missing tables in one query),
validate each row (:mod:`kapow.postgres.validate`), plan the statements (:mod:`kapow.postgres.statements`); then
ONE round trip applies every table's statements, each table fenced (:mod:`kapow.postgres.writer`); then each
table is settled on its own: landed, its bad rows isolated (:mod:`kapow.postgres.isolate`), or failed in a way
that holds it (a lock, a timeout) or its database (the connection).

This module decides nothing about waiting, retrying or parking: it reports, per table, either the results of
its works or the failure that stopped them, and the lane (:mod:`kapow.pipeline.lane`) decides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg

from kapow.config import DestinationConfig
from kapow.contract import Destination, TableKey, as_bytes, decode_keys, shorten
from kapow.errors import TABLE_WIDE_USER_CODES, ErrorCode, Failure, PacketError, Scope
from kapow.formats.debezium import ChangeDecoder, ChangeKind  # imported once, not per event (0.5 µs)
from kapow.pipeline.work import ErrorRecord, Row, TableWork, WorkResult
from kapow.postgres.catalog import Catalog, Table, load_tables, not_a_table
from kapow.postgres.isolate import IsolationAborted, isolate
from kapow.postgres.statements import RowIn, RowLike, Statement, plan, plan_last_wins
from kapow.postgres.validate import key_columns, validate
from kapow.postgres.writer import apply_unit

log = logging.getLogger(__name__)

# A catalog entry older than this is reread before a schema failure is believed: a client who adds a column and
# starts sending it is refused for about a second, not for the catalog's whole TTL.
RECHECK_AFTER_S = 1.0
# After a table's plain inserts met a duplicate (kapow.postgres.writer), its inserts go straight to ON CONFLICT
# DO NOTHING for this long: a client that keeps resending rows costs one wasted attempt a minute, not one a unit.
PLAIN_PAUSE_S = 60.0
SCHEMA_CODES = frozenset({ErrorCode.UNKNOWN_COLUMN, ErrorCode.MISSING_COLUMN, ErrorCode.UNKNOWN_TABLE,
                          ErrorCode.NO_UNIQUE_KEY, ErrorCode.MISSING_KEY})


@dataclass(slots=True)
class TableJob:
    """One table's part of a unit: its queued works, oldest first."""

    key: TableKey
    config: DestinationConfig
    works: list[TableWork]


@dataclass(slots=True)
class JobOutcome:
    """Per table: ``results`` when every work is answered, else the ``failure`` that stopped it (not a row's)."""

    job: TableJob
    results: list[WorkResult] | None = None
    failure: Failure | None = None
    seconds: float = 0.0  # what its statements took in the database (kapow.pipeline.lane: a slow one goes alone)
    # its works go back to its queue (a ROW-scope failure holds nothing) to be written in a unit of their own:
    # a table with bad rows is isolated there, not in a unit whose other tables would wait for its bisection
    alone: bool = False


@dataclass(slots=True)
class _Prepared:
    job: TableJob
    table: Table | None
    rows: list[Row] = field(default_factory=list)  # rows to write, flattened in offset order
    owners: list[int] = field(default_factory=list)  # index of each row's work in job.works
    inputs: list[RowLike] = field(default_factory=list)
    failed: list[tuple[int, ErrorRecord]] = field(default_factory=list)  # (work index, record), before writing
    statements: list[Statement] = field(default_factory=list)
    skipped: dict[int, int] = field(default_factory=dict)  # work index -> changes that write nothing (truncates)


def write_unit(conn: psycopg.Connection[Any], catalog: Catalog, jobs: list[TableJob]) -> list[JobOutcome]:
    """Write ``jobs`` on ``conn``. Raises when nothing was written (the whole call failed); else one outcome each."""
    tables = _tables(conn, catalog, [job.key for job in jobs])
    encoding = conn.info.encoding  # read once a unit: a unit may hold thousands of tables
    name = conn.info.parameter_status("client_encoding") or encoding
    prepared = [_prepare(conn, catalog, job, *tables[job.key], encoding, name) for job in jobs]
    to_apply = [p for p in prepared if p.statements]
    now = time.monotonic()
    plain_first = [p.table is not None and p.table.plain_inserts and now >= p.table.plain_from for p in to_apply]
    copy_into = [p.table if plain and p.table is not None and not p.table.row_security and now >= p.table.copy_from
                 else None for p, plain in zip(to_apply, plain_first, strict=True)]
    outcomes = apply_unit(conn, [p.statements for p in to_apply], plain_first, copy_into) if to_apply else []
    for p, applied in zip(to_apply, outcomes, strict=True):
        if applied.conflicted and p.table is not None:
            p.table.plain_from = now + PLAIN_PAUSE_S
            log.debug("%s: a duplicate met by plain inserts; ON CONFLICT DO NOTHING for %.0f s", p.job.key.label,
                      PLAIN_PAUSE_S)
        if applied.copy_failed and p.table is not None:
            p.table.copy_from = now + PLAIN_PAUSE_S  # one wasted COPY a minute for a table that keeps refusing
            log.debug("%s: a COPY failed or its rows were not COPY text; inserts by statement for %.0f s",
                      p.job.key.label, PLAIN_PAUSE_S)
    by_job = dict(zip([id(p) for p in to_apply], outcomes, strict=True))
    out: list[JobOutcome] = []
    for p in prepared:
        outcome = by_job.get(id(p))
        if outcome is None:  # nothing to write: every row failed validation (or there were none)
            out.append(JobOutcome(p.job, results=_results(p, 0, [])))
            continue
        if outcome.failure is None:
            out.append(JobOutcome(p.job, results=_landed(p, outcome.affected), seconds=outcome.seconds))
            continue
        if len(jobs) > 1 and outcome.failure.scope is Scope.ROW and (
                outcome.failure.code not in TABLE_WIDE_USER_CODES or not _first_try(p)):
            # bisecting 20,000 half-bad rows took 83 s, and its unit's other tables were answered only then (a
            # hostile run): the table is isolated in a unit of its own instead, and its neighbours are answered now
            # (a table-wide code on a first try is not isolated at all: _settle holds the table once instead)
            out.append(JobOutcome(p.job, failure=outcome.failure, seconds=outcome.seconds, alone=True))
            continue
        started = time.monotonic()
        settled = _settle(conn, catalog, p, outcome.failure)
        settled.seconds = outcome.seconds + (time.monotonic() - started)  # its isolation is its time too
        out.append(settled)
    return out


def _tables(conn: psycopg.Connection[Any], catalog: Catalog, keys: list[TableKey]
            ) -> dict[TableKey, tuple[Table | None, float]]:
    """Every table of the unit from the catalog, the missing ones (and stale misses) read in one query; each with
    its entry's age as the unit starts (0 for those read now)."""
    found: dict[TableKey, tuple[Table | None, float]] = {}
    wanted: list[TableKey] = []
    for key in keys:
        cached, table, age = catalog.lookup(key)
        if cached and (table is not None or age < RECHECK_AFTER_S):
            found[key] = (table, age)
        else:
            wanted.append(key)
    if wanted:
        loaded = load_tables(conn, [(k.schema, k.table) for k in wanted])
        for key in wanted:
            table = loaded.get((key.schema, key.table))
            catalog.put(key, table)
            found[key] = (table, 0.0)
    return found


def _prepare(conn: psycopg.Connection[Any], catalog: Catalog, job: TableJob, table: Table | None,
             age: float, encoding: str, name: str) -> _Prepared:
    """Validate a job's rows against ``table``, whose catalog entry was ``age`` seconds old as the unit started
    (``encoding``: the connection's, as Python and PostgreSQL name it).

    A schema failure is believed only from an entry under :data:`RECHECK_AFTER_S` old; an older one is reread
    first. The age is the unit's start's, not this job's: preparing 10,000 jobs of unknown tables took over a
    second, and every job after that second reread its table alone, one query each, although the whole unit
    had just read them all in one (a flood of ever-new table names, 2026-11-27: 24 s for one unit).
    """
    derived = _derived(table)
    p = _Prepared(job, table)
    _validate(p, encoding, name)
    if age >= RECHECK_AFTER_S and any(r.failure.code in SCHEMA_CODES for _, r in p.failed):
        fresh = load_tables(conn, [(job.key.schema, job.key.table)]).get((job.key.schema, job.key.table))
        catalog.put(job.key, fresh)  # the table may have changed since we read it: believe a fresh read only
        p = _Prepared(job, fresh)
        _validate(p, encoding, name)
    if p.rows and p.table is not None:
        p.statements = _last_wins(p.table, p.inputs) or plan(
            p.table, p.inputs, order_keys(p.table, p.inputs), nulls_ok=job.config.allow_no_unique_key)
    if p.table is not None and p.table is table and _derived(table) != derived:  # its caches grew: re-measure
        catalog.refresh_size(job.key)
    return p


def _derived(table: Table | None) -> int:
    return 0 if table is None else len(table.statements) + len(table.verdicts)


def _verdict(
    verdicts: dict[tuple[tuple[str, ...], Destination], Failure | None],
    table: Table,
    config: DestinationConfig,
    dest: Destination,
    keys: tuple[str, ...],
) -> Failure | None:
    """One shape's verdict, validated once per unit (the key holds its tuple and destination alive)."""
    shape = (keys, dest)
    if shape in verdicts:
        return verdicts[shape]
    verdict = verdicts[shape] = validate(table, config, dest, keys)
    return verdict


def _fits(doc: bytes, encoding: str) -> bool:
    """True when ``doc``'s characters exist in the database's client encoding (always, in UTF-8)."""
    raw = as_bytes(doc)
    if raw.isascii():
        return True
    try:
        raw.decode("utf-8").encode(encoding)
    except UnicodeError:
        return False
    return True


def _validate(p: _Prepared, encoding: str = "utf-8", encoding_name: str = "UTF8") -> None:
    """Validate each row's shape against its table; ``encoding``: the connection's (Python's name for it, and
    PostgreSQL's).

    A database not in UTF-8 cannot hold every character: a row with one it cannot (a '漢' for LATIN1) is the
    client's ``bad_value``, found here, because psycopg would refuse to encode the whole unit's text and no
    table of it would land (an ``internal`` error, over and over).
    """
    table = p.table
    foreign = encoding != "utf-8"
    config = p.job.config
    # Consecutive rows nearly always share their shape (sort and the Debezium decoder intern column names), so
    # the previous row's verdict is checked by identity first; a new shape is looked up by value, once per shape
    # and unit (by value, not by id: a decoded row that fails is let go, and its tuple's id may be reused).
    verdicts: dict[tuple[tuple[str, ...], Destination], Failure | None] = {}
    rows, owners, inputs = p.rows.append, p.owners.append, p.inputs.append
    refused = not_a_table(table) if table is not None else None
    wrong = None if refused is None else Failure(ErrorCode.UNSUPPORTED_TABLE, refused, Scope.ROW)
    for w, work in enumerate(p.job.works):
        if table is not None and wrong is None and not foreign and _uniform(work.rows) \
                and _verdict(verdicts, table, config, work.rows[0].dest, work.rows[0].keys) is None:
            # the usual work: rows of one shape (sort interns it), none a change event, no metadata, all valid:
            # taken whole (0.07 ms for 10,000 rows to check them, against 0.25 to walk them through the loop)
            p.rows.extend(work.rows)
            p.owners.extend([w] * len(work.rows))
            p.inputs.extend(work.rows)
            continue
        last_keys: tuple[str, ...] | None = None
        last_dest: Destination | None = None
        verdict: Failure | None = None
        for row in work.rows:
            if table is None:
                failure: Failure | None = unknown_table(p.job.key)
            elif wrong is not None:
                failure = wrong
            elif row.route is None:
                keys, dest = row.keys, row.dest
                if keys is not last_keys or dest is not last_dest:
                    verdict = _verdict(verdicts, table, config, dest, keys)
                    last_keys, last_dest = keys, dest
                failure = verdict
            else:  # a Debezium change event: decoded now that the column types are known
                try:
                    decoded = decode_change_row(table, row)
                except PacketError as exc:
                    p.failed.append((w, ErrorRecord(row.msg, exc.failure, row.dest)))
                    continue
                if decoded is None:
                    p.skipped[w] = p.skipped.get(w, 0) + 1
                    continue
                row = decoded
                keys, dest = row.keys, row.dest
                if keys is not last_keys or dest is not last_dest:
                    verdict = _verdict(verdicts, table, config, dest, keys)
                    last_keys, last_dest = keys, dest
                failure = verdict
            if failure is not None:
                p.failed.append((w, ErrorRecord(row.msg, failure, row.dest)))
                continue
            entry = row if row.dest.metadata is None else _row_in(row)
            if isinstance(entry, Failure):
                p.failed.append((w, ErrorRecord(row.msg, entry, row.dest)))
                continue
            if foreign and not _fits(entry.doc, encoding):
                failure = Failure(ErrorCode.BAD_VALUE, f"data holds a character the database's encoding"
                                                       f" ({encoding_name}) cannot store", Scope.ROW)
                p.failed.append((w, ErrorRecord(row.msg, failure, row.dest)))
                continue
            rows(row)
            owners(w)
            inputs(entry)


def _uniform(rows: list[Row]) -> bool:
    """True when ``rows`` all share one key tuple and one destination object (no metadata), none a change event."""
    if not rows:
        return False
    first = rows[0]
    keys, dest = first.keys, first.dest
    return dest.metadata is None and all(r.keys is keys and r.dest is dest and r.route is None for r in rows)


def _row_in(row: Row) -> RowLike | Failure:
    """The row with its metadata columns added, or the client's failure when ``data`` gives one of them too (the
    JSON's last key won, silently: a row landed with the offset as its id, and another row's upsert overwrote it)."""
    meta = row.dest.metadata
    if meta is None:
        return row
    given = [(name, column) for name, column in meta.columns() if column in row.keys]
    if given:
        name, column = given[0]
        return Failure(ErrorCode.BAD_PACKET, f"data gives column {shorten(column, 100)!r}, which metadata fills from"
                                             f" the record's {name}: drop it from one of them", Scope.ROW)
    msg = row.msg
    values = {"offset": msg.offset(), "partition": msg.partition(), "topic": msg.topic(),
              "timestamp": msg.timestamp()[1], "key": msg.key()}
    extra = []
    keys = list(row.keys)
    for name, column in meta.columns():
        value = values[name]
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:  # (U+FFFD in its place changed the key silently: a hostile run)
                return Failure(ErrorCode.BAD_VALUE, f"the record's {name} is not UTF-8 text, so it cannot fill column"
                                                    f" {shorten(column, 100)!r}", Scope.ROW)
        if name == "timestamp" and isinstance(value, int):
            value = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(value / 1000)) + f".{value % 1000:03d}Z"
        extra.append(msgspec.json.encode(column) + b":" + msgspec.json.encode(value))
        keys.append(column)
    doc = as_bytes(row.doc)[:-1].rstrip() + b"," + b",".join(extra) + b"}"  # data is a non-empty object: '{...}'
    return RowIn(doc, tuple(keys), row.dest)


def _last_wins(table: Table, inputs: list[RowLike]) -> list[Statement] | None:
    """Upserts of one shape to one unguarded destination: one statement that folds them in PostgreSQL."""
    dest = inputs[0].dest
    if dest.mode != "upsert" or dest.version is not None or len(table.unique_keys) > 1:
        return None  # (a table with two unique keys: its upserts interact through both, in offset order only)
    key = key_columns(table, dest)
    if not isinstance(key, tuple) or key not in table.folding_keys:
        return None  # an index with its own collation or operator class: equal keys are the index's to say
    return plan_last_wins(table, inputs, key)


def order_keys(table: Table, inputs: list[RowLike]) -> dict[int, tuple[str, ...]]:
    """Every row's unique key, when order between rows of one key matters; else none (the fast path).

    Inserts of one shape keep their order inside one statement. Order matters across statements: rows that
    give different columns (one key inserted in two shapes: the first must win) or any upsert or delete.
    """
    first = inputs[0]
    keys, dest = first.keys, first.dest
    if dest.mode == "insert" and all(r.keys is keys and r.dest is dest for r in inputs):
        return {}  # rows of one shape share their objects (sort interns them): compared by identity, 3x cheaper
    if all(r.dest.mode == "insert" and r.keys == keys and r.dest == dest for r in inputs):
        return {}
    out: dict[int, tuple[str, ...]] = {}
    found: dict[tuple[int, int], tuple[str, ...] | None] = {}  # by shape identity (sort interns keys and dests)
    for i, row in enumerate(inputs):
        shape = (id(row.dest), id(row.keys))
        if shape in found:
            key = found[shape]
        else:
            resolved = key_columns(table, row.dest)
            key = found[shape] = resolved if isinstance(resolved, tuple) and all(c in row.keys for c in resolved) \
                else None
        if key is not None:
            out[i] = key
    return out


def decode_change_row(table: Table, row: Row) -> Row | None:
    """The row a Debezium change event writes (an upsert of ``after``, a delete by the key), or None to skip it."""
    route = row.route
    assert route is not None
    decoder = table.change_decoder
    if decoder is None:
        decoder = table.change_decoder = ChangeDecoder(
            column_types={c.name: c.sql_type for c in table.columns.values()}, max_bytes=route.max_bytes,
            max_depth=route.max_depth)
    change = decoder.decode(row.msg.value(), row.msg.key())
    if change.kind is ChangeKind.SKIP or change.row is None:
        return None
    doc = change.row
    if change.kind is ChangeKind.DELETE:
        if not route.deletes:
            raise PacketError(ErrorCode.FORBIDDEN_MODE, f"a delete event, and {route.key.vanity!r} does not allow"
                                                        " deletes (add \"delete\" to its modes)")
        dest = route.dests["delete"]
    else:
        dest = route.dests["upsert"]
    keys = change.keys
    if not keys:
        raise PacketError(ErrorCode.BAD_PACKET, "data is empty: give at least one column")
    extra = [(column, change.lsn if field == "lsn" else change.ts_ms) for field, column in route.source_columns]
    if extra:
        doc = doc[:-1].rstrip() + b"," + b",".join(msgspec.json.encode(c) + b":" + msgspec.json.encode(v)
                                                    for c, v in extra) + b"}"
        keys = tuple(dict.fromkeys(keys + tuple(c for c, _ in extra)))  # a name given twice: its first place
    if doc.count(b"[") + doc.count(b"{") > route.max_depth + 2:  # converted values (Json inside arrays) nest deeper
        decode_keys(doc, max_depth=route.max_depth + 2)  # raises as before when the row as written is too deep
    return Row(row.msg, doc, keys, dest)


def unknown_table(key: TableKey) -> Failure:
    return Failure(ErrorCode.UNKNOWN_TABLE, f"table {key.schema}.{key.table} does not exist in database"
                                            f" {key.database!r}")


def _settle(conn: psycopg.Connection[Any], catalog: Catalog, p: _Prepared, failure: Failure) -> JobOutcome:
    """A table whose fenced statements failed: hold it, or fail its rows, or isolate the bad ones."""
    if failure.scope is not Scope.ROW:
        return JobOutcome(p.job, failure=failure)
    if failure.code in TABLE_WIDE_USER_CODES:
        # Validation passed, so the table changed under us (a column dropped, a privilege revoked): reread it and
        # try once more, when every row is validated afresh. A second refusal, the fresh catalog still passing the
        # rows, may be the rows' own: a row-level security policy refuses some owners (42501), a trigger raises
        # 42P01 or 0A000 for some rows, a regclass value names no relation. Those were believed for every row, and
        # a table's good rows went with its bad one (a hostile run): the rows are isolated instead, each failing
        # with its own message; a table that refuses them all fails them all, one probe per range.
        catalog.invalidate(p.job.key)
        if _first_try(p):
            return JobOutcome(p.job, failure=Failure(ErrorCode.TIMEOUT, f"table changed while writing:"
                                                                         f" {failure.message}", Scope.TABLE))
    assert p.table is not None
    try:
        isolated = isolate(conn, p.table, p.statements, p.inputs)
    except IsolationAborted as exc:
        return JobOutcome(p.job, failure=exc.failure)
    failed = [(p.owners[i], ErrorRecord(p.rows[i].msg, f, p.rows[i].dest)) for i, f in isolated.failures]
    sources = sum(s.sources for s in p.statements)
    duplicates = max(0, sources - len(isolated.failures) - isolated.affected)
    results = _results(p, duplicates, failed)
    if results:
        results[0].probes = isolated.probes
    return JobOutcome(p.job, results=results)


def _first_try(p: _Prepared) -> bool:
    return all(w.attempts == 0 for w in p.job.works)


def _landed(p: _Prepared, affected: list[int]) -> list[WorkResult]:
    elements = sum(len(s.elements) for s in p.statements)
    changed = sum(len(s.elements) if s.lands_all else n for s, n in zip(p.statements, affected, strict=True))
    return _results(p, max(0, elements - changed), [])


def _results(p: _Prepared, duplicates: int, failed: list[tuple[int, ErrorRecord]]) -> list[WorkResult]:
    """Split a table's counts over its works: failures exactly, no-ops from the first work on."""
    now = time.monotonic()
    results = [WorkResult(work, seconds=now - work.enqueued_at, attempts=work.attempts + 1)
               for work in p.job.works]
    for w, record in p.failed:
        results[w].failed.append(record)
    for w, record in failed:
        results[w].failed.append(record)
    for w, n in p.skipped.items():
        results[w].duplicates += n
    remaining_dup = duplicates
    for result in results:
        ok = len(result.work.rows) - len(result.failed) - result.duplicates
        dup = min(ok, remaining_dup)
        remaining_dup -= dup
        result.duplicates += dup
        result.landed = ok - dup
    return results
