"""Write one batch of rows into one table: COPY into staging, then one INSERT … SELECT … ON CONFLICT DO NOTHING.

The rows travel as the client's own JSON text (``data``), one line each, into a per-connection temporary
staging table, and PostgreSQL turns them into typed rows with ``json_populate_record`` against the
destination's own row type. So every cast is PostgreSQL's input function, in C, on the database's core, and
Python only joins bytes: no per-value work on the hot path.

Idempotency is the destination's unique key: ``ON CONFLICT DO NOTHING`` turns a replay into a no-op.

When the batch fails on bad rows, the transaction is redone with the staging data in place and the failing
range split in halves under savepoints until each bad row stands alone; every good row lands and each bad row
gets the database's own message. A system error (connection lost, timeout) is raised to the caller instead,
which retries the whole group: its transaction never committed, so nothing is half-written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from kapow.errors import ErrorClass, ErrorCode, Failure, classify_exception, one_line
from kapow.postgres.catalog import Table

log = logging.getLogger(__name__)

STAGING_TABLE = "kapow_staging"
_STAGING_DDL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (n int4 NOT NULL, doc text NOT NULL) ON COMMIT DELETE ROWS"
)
_COPY = sql.SQL(f"COPY {STAGING_TABLE} (n, doc) FROM STDIN")


def configure_connection(conn: psycopg.Connection[Any], *, statement_timeout_ms: int) -> None:
    """Run once per new connection: the staging table and the statement timeout live as long as it does."""
    conn.execute(_STAGING_DDL)
    conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(statement_timeout_ms),))
    conn.commit()


@dataclass(frozen=True, slots=True)
class Slice:
    """Rows ``[lo, hi)`` of a group, which all give the same columns (so missing ones take their defaults)."""

    columns: tuple[str, ...]
    lo: int
    hi: int


@dataclass(slots=True)
class WriteResult:
    inserted: int = 0  # new rows
    duplicates: int = 0  # rows already there (a replay): ON CONFLICT DO NOTHING skipped them
    failures: list[tuple[int, Failure]] = field(default_factory=list)  # (row index, why) for bad rows
    probes: int = 0  # statements spent isolating bad rows


_prefixes: list[bytes] = []


def copy_payload(docs: list[bytes]) -> bytes:
    """COPY text format: ``n<TAB>doc`` lines, with backslash and the whitespace COPY treats specially escaped.

    Built without a Python-level loop per row: the docs are joined with NUL (which no JSON text contains: the
    decoder refused it), escaped in four C passes over the whole buffer, split again, and zipped with cached
    ``n<TAB>`` prefixes.
    """
    if not docs:
        return b""
    while len(_prefixes) < len(docs):
        _prefixes.extend(b"%d\t" % i for i in range(len(_prefixes), max(len(docs), 2 * len(_prefixes))))
    joined = b"\x00".join(docs)
    if b"\\" in joined:
        joined = joined.replace(b"\\", b"\\\\")
    for special, escaped in ((b"\n", b"\\n"), (b"\r", b"\\r"), (b"\t", b"\\t")):
        if special in joined:
            joined = joined.replace(special, escaped)
    return b"\n".join(map(b"".join, zip(_prefixes, joined.split(b"\x00"), strict=False))) + b"\n"


_insert_cache: dict[tuple[str, str, tuple[str, ...]], sql.Composed] = {}


def insert_statement(table: Table, columns: tuple[str, ...]) -> sql.Composed:
    """The INSERT for one slice; every name comes from the catalog and is quoted by psycopg."""
    key = (table.schema, table.name, columns)
    stmt = _insert_cache.get(key)
    if stmt is None:
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        rcols = sql.SQL(", ").join(sql.Identifier("r", c) for c in columns)
        stmt = sql.SQL(
            "INSERT INTO {tbl} ({cols}) SELECT {rcols} FROM {staging} s"
            " CROSS JOIN LATERAL json_populate_record(NULL::{tbl}, s.doc::json) r"
            " WHERE s.n >= %s AND s.n < %s ON CONFLICT DO NOTHING"
        ).format(tbl=table.qualified, cols=cols, rcols=rcols, staging=sql.Identifier(STAGING_TABLE))
        if len(_insert_cache) > 10_000:
            _insert_cache.clear()
        _insert_cache[key] = stmt
    return stmt


def write_table(conn: psycopg.Connection[Any], table: Table, docs: list[bytes], slices: list[Slice]) -> WriteResult:
    """Land ``docs`` (the JSON ``data`` of each row) in ``table``, in one transaction.

    Raises the database exception for system errors (the caller retries); returns the bad rows otherwise.
    """
    payload = copy_payload(docs)
    try:
        with conn.transaction(), conn.cursor() as cur:
            _copy(cur, payload)
            inserted = 0
            for s in slices:
                cur.execute(insert_statement(table, s.columns), (s.lo, s.hi))
                inserted += max(cur.rowcount, 0)
        return WriteResult(inserted=inserted, duplicates=len(docs) - inserted)
    except psycopg.Error as exc:
        failure = classify_exception(exc)
        if failure.error_class is ErrorClass.SYSTEM or conn.closed:
            raise
        log.debug("batch into %s.%s failed (%s); isolating bad rows", table.schema, table.name, failure.message)
    return _write_isolating(conn, table, payload, slices, len(docs))


def _copy(cur: psycopg.Cursor[Any], payload: bytes) -> None:
    with cur.copy(_COPY) as copy:
        copy.write(payload)


def _write_isolating(
    conn: psycopg.Connection[Any], table: Table, payload: bytes, slices: list[Slice], total: int
) -> WriteResult:
    result = WriteResult()
    with conn.transaction(), conn.cursor() as cur:
        _copy(cur, payload)
        for s in slices:
            stmt = insert_statement(table, s.columns)
            pending = [(s.lo, s.hi)]
            while pending:
                lo, hi = pending.pop()
                result.probes += 1
                try:
                    with conn.transaction():  # a savepoint: a failed probe undoes only itself
                        cur.execute(stmt, (lo, hi))
                        result.inserted += max(cur.rowcount, 0)
                except psycopg.Error as exc:
                    failure = classify_exception(exc)
                    if failure.error_class is ErrorClass.SYSTEM or conn.closed:
                        raise
                    if hi - lo == 1:
                        if failure.code is ErrorCode.BAD_VALUE:
                            failure = _name_the_column(conn, cur, table, s.columns, lo, failure)
                        result.failures.append((lo, failure))
                    else:
                        mid = (lo + hi) // 2
                        pending.append((mid, hi))
                        pending.append((lo, mid))
    result.duplicates = total - result.inserted - len(result.failures)
    return result


def _name_the_column(
    conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], table: Table, columns: tuple[str, ...], n: int,
    failure: Failure,
) -> Failure:
    """Find which column of bad row ``n`` PostgreSQL refuses, by casting its values one column at a time.

    Only ever run for a row already isolated as bad, so it costs nothing on the hot path; the client gets
    "column amount (numeric(12,2)): invalid input syntax …" instead of a message that names no column.
    """
    probe = sql.SQL(
        "SELECT json_populate_record(NULL::{tbl}, json_build_object(%s::text, s.doc::json -> %s::text))"
        " FROM {staging} s WHERE s.n = %s"
    ).format(tbl=table.qualified, staging=sql.Identifier(STAGING_TABLE))
    for name in columns:
        try:
            with conn.transaction():
                cur.execute(probe, (name, name, n))
        except psycopg.Error as exc:
            if classify_exception(exc).error_class is ErrorClass.SYSTEM or conn.closed:
                raise
            column = table.columns.get(name)
            kind = f" ({column.sql_type})" if column is not None else ""
            return Failure(failure.code, f"column {name}{kind}: {one_line(exc)}")
    return failure
