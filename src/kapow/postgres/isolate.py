"""Isolate the bad rows of one table: bisect each failing statement until every bad element stands alone.

Runs only for a table whose statements failed on a row-level error (a value its column refuses, a constraint, a
trigger's RAISE). In one transaction, each statement is tried whole; a failing range is split in halves, each
half tried inside the apply function's own fence (a subtransaction), until a failing range has EACH_MAX
elements or fewer: those are applied element by element in one call (``pg_temp.kapow_each``), each in a
subtransaction of its own. Every good row lands and each bad row gets the database's own message, naming the
column and its type where the server does not: for a value the column refuses, its values are cast one at a
time (in the same call, or by :func:`name_the_column`). That costs about 2·log2(n/EACH_MAX) round trips per
sparse bad row, one per EACH_MAX rows where they are dense, and nothing on the hot path. (Bisected to single
rows, with a round trip per column probed, a stream of bad values was isolated at ~280 rows a second and the
good rows of its table waited behind it: 66 s for 20,000, now 7 s.)

An element that stands for several packets (upserts of one key folded together) and fails is unfolded: its
packets are applied one by one, in order, so that only the packet that is bad fails.

A failure that is not a row's (the connection lost, a lock or statement timeout) aborts the isolation: the
transaction rolls back and :class:`IsolationAborted` tells the caller to retry or hold the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from kapow.contract import as_bytes
from kapow.errors import ErrorCode, Failure, Scope, classify_exception, classify_fenced, one_line
from kapow.postgres.catalog import Table
from kapow.postgres.statements import Element, RowLike, Statement, plan
from kapow.postgres.writer import call

_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])  # a row's values, each as its own JSON
# A failing range of this many elements or fewer is applied element by element in one call (writer.EACH_FUNCTION)
# rather than bisected further: ~30 µs of the server a row, against a bisection's two round trips a level.
EACH_MAX = 32
_EACH = "SELECT i, affected, state, message, col, ctype FROM pg_temp.kapow_each(%s, %s::text[], %s)"


class IsolationAborted(Exception):
    """A failure that is not a row's met while isolating bad rows; carries it."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(slots=True)
class Isolated:
    affected: int = 0  # rows changed by the elements that landed
    landed_sources: int = 0  # packets whose element landed (changed a row or was a no-op)
    failures: list[tuple[int, Failure]] = field(default_factory=list)  # (row index, why)
    probes: int = 0  # statements spent isolating


def isolate(conn: psycopg.Connection[Any], table: Table, statements: Sequence[Statement],
            rows: Sequence[RowLike]) -> Isolated:
    """Apply ``statements`` in one transaction, every bad element isolated and reported with its rows."""
    result = Isolated()
    try:
        with conn.transaction():
            _apply_in_turn(conn, table, statements, rows, result)
    except IsolationAborted:
        raise
    except psycopg.Error as exc:  # the commit itself, or the connection
        failure = classify_exception(exc)
        raise IsolationAborted(failure if failure.scope is not Scope.ROW else
                               Failure(ErrorCode.DATABASE_UNAVAILABLE, f"connection lost: {failure.message}",
                                       Scope.DATABASE)) from None
    return result


def _apply_in_turn(conn: psycopg.Connection[Any], table: Table, statements: Sequence[Statement],
                   rows: Sequence[RowLike], result: Isolated) -> None:
    """Apply the statements in order, bisecting only the ones that fail.

    The statements from the first not yet applied go in ONE call; the apply function names the one that failed
    (its fence rolled the call back), so the ones before it go again in one call, that one is bisected, and the
    rest go on the same way. A table written in offset order (kapow.postgres.statements._plan_in_order) has a
    statement per switch of operation, thousands in a batch: tried one by one, a bad row among them cost a round
    trip per statement (a hostile run: ~1,000 rows/s).
    """
    pos = 0
    while pos < len(statements):
        failed = _try_from(conn, statements, pos, len(statements), result)
        if failed is None:
            return
        failed_at, known = failed
        if failed_at > pos and _try_from(conn, statements, pos, failed_at, result) is not None:
            for statement in statements[pos:failed_at]:  # (not expected: what failed did so after them)
                _bisect(conn, table, statement, rows, result)
        _bisect(conn, table, statements[failed_at], rows, result, known)
        pos = failed_at + 1


def _try_from(conn: psycopg.Connection[Any], statements: Sequence[Statement], lo: int, hi: int,
              result: Isolated) -> tuple[int, tuple[Failure, str | None]] | None:
    """Apply ``statements[lo:hi]`` in one call: None when all landed (counted), else the index of the one that
    failed with a row's error, and that error (nothing of the call applied)."""
    result.probes += 1
    part = statements[lo:hi]
    try:
        answer = call(conn, [s.text for s in part], [s.payload() for s in part], [1, len(part) + 1])
    except psycopg.Error as exc:
        failure = classify_exception(exc)
        if failure.scope is Scope.ROW:  # a whole-call error that is a row's would be our own bug: hold the table
            failure = Failure(ErrorCode.INTERNAL, failure.message, Scope.TABLE)
        raise IsolationAborted(failure) from None
    if len(answer) == 1 and answer[0][3] is not None:
        (_t, k, _affected, state, message, column, _conflicted, _ms), = answer
        code, scope = classify_fenced(state)
        failure = Failure(code, one_line(message or state), scope)
        if scope is not Scope.ROW:
            raise IsolationAborted(failure)
        return lo + int(k) - 1, (failure, column or None)
    for statement, (_t, _k, affected, *_rest) in zip(part, answer, strict=True):
        result.affected += len(statement.elements) if statement.lands_all else int(affected)
        result.landed_sources += statement.sources
    return None


def _try(conn: psycopg.Connection[Any], statement: Statement, elements: list[Element],
         result: Isolated) -> tuple[int, Failure | None, str | None]:
    result.probes += 1
    payload = (b"[" + b",".join(e.doc for e in elements) + b"]").decode()
    try:
        rows = call(conn, [statement.text], [payload], [1, 2])
    except psycopg.Error as exc:
        failure = classify_exception(exc)
        if failure.scope is Scope.ROW:  # a whole-call error that is a row's would be our own bug: hold the table
            failure = Failure(ErrorCode.INTERNAL, failure.message, Scope.TABLE)
        raise IsolationAborted(failure) from None
    (_t, _k, affected, state, message, column, _conflicted, _ms), = rows
    if state is None:
        return int(affected), None, None
    code, scope = classify_fenced(state)
    failure = Failure(code, one_line(message or state), scope)
    if scope is not Scope.ROW:
        raise IsolationAborted(failure)
    return 0, failure, column or None


def _bisect(conn: psycopg.Connection[Any], table: Table, statement: Statement, rows: Sequence[RowLike],
            result: Isolated, known: tuple[Failure, str | None] | None = None) -> None:
    """``known``: the statement is known to fail whole, so: its error (it is not tried whole again)."""
    pending = [(0, len(statement.elements))]
    while pending:
        lo, hi = pending.pop()
        elements = statement.elements[lo:hi]
        failure: Failure | None
        if known is not None:
            affected, (failure, column), known = 0, known, None
        else:
            affected, failure, column = _try(conn, statement, elements, result)
        if failure is None:
            result.affected += len(elements) if statement.lands_all else affected
            result.landed_sources += sum(len(e.sources) for e in elements)
            continue
        if hi - lo > EACH_MAX:
            mid = (lo + hi) // 2
            pending.append((mid, hi))
            pending.append((lo, mid))
            continue
        if hi - lo == 1:
            _refused(conn, table, statement, elements[0], failure, column, rows, result)
            continue
        for element, (affected, failure, column, named) in zip(elements, _each(conn, table, statement, elements,
                                                                               result), strict=True):
            if failure is None:
                result.affected += 1 if statement.lands_all else affected
                result.landed_sources += len(element.sources)
            else:
                _refused(conn, table, statement, element, failure, column, rows, result, named=named)


def _refused(conn: psycopg.Connection[Any], table: Table, statement: Statement, element: Element, failure: Failure,
             column: str | None, rows: Sequence[RowLike], result: Isolated, *, named: bool = False) -> None:
    """One element found bad: unfolded when it stands for several packets, else its packet's failure, with the
    column named (``named``: the failure names it already)."""
    if len(element.sources) > 1:
        _unfold(conn, table, element, rows, result, statement.nulls_ok)
        return
    if not named and failure.code is ErrorCode.BAD_VALUE and column is None:
        failure = name_the_column(conn, table, rows[element.sources[0]], failure)
    elif not named and column:
        failure = Failure(failure.code, f"column {column}: {failure.message}", failure.scope)
    result.failures.append((element.sources[0], failure))


def _each(conn: psycopg.Connection[Any], table: Table, statement: Statement, elements: list[Element],
          result: Isolated) -> list[tuple[int, Failure | None, str | None, bool]]:
    """Each element applied alone, in a subtransaction of its own, all in one call (``pg_temp.kapow_each``):
    (rows affected, its failure or None, the column the server named, whether the failure names its column and
    type already) per element. A value its column refuses is named in the same call, as
    :func:`name_the_column` would."""
    result.probes += 1
    payloads = [(b"[" + as_bytes(e.doc) + b"]").decode() for e in elements]
    try:
        with conn.cursor() as cur:
            cur.execute(_EACH, (statement.text, payloads, table.qualified.as_string(conn)))
            answer = cur.fetchall()
    except psycopg.Error as exc:
        failure = classify_exception(exc)
        if failure.scope is Scope.ROW:  # a whole-call error that is a row's would be our own bug: hold the table
            failure = Failure(ErrorCode.INTERNAL, failure.message, Scope.TABLE)
        raise IsolationAborted(failure) from None
    out: list[tuple[int, Failure | None, str | None, bool]] = []
    for _i, affected, state, message, column, ctype in answer:
        if state is None:
            out.append((int(affected), None, None, False))
            continue
        code, scope = classify_fenced(state)
        failure = Failure(code, one_line(message or state), scope)
        if scope is not Scope.ROW:
            raise IsolationAborted(failure)
        if ctype and column:
            failure = Failure(code, f"column {column} ({ctype}): {failure.message}", scope)
            out.append((0, failure, column, True))
        else:
            out.append((0, failure, column or None, False))
    return out


def _unfold(conn: psycopg.Connection[Any], table: Table, element: Element, rows: Sequence[RowLike],
            result: Isolated, nulls_ok: bool) -> None:
    """Apply the packets of a folded element one by one, in order, so that only the bad one fails."""
    for index in element.sources:
        single = rows[index]
        keys_of = {0: _key_of(table, single)} if single.dest.mode != "insert" else {}
        (statement,) = plan(table, [single], keys_of, nulls_ok=nulls_ok)
        statement.elements[0].sources = [index]
        _bisect(conn, table, statement, rows, result)


def _key_of(table: Table, row: RowLike) -> tuple[str, ...]:
    from kapow.postgres.validate import key_columns

    key = key_columns(table, row.dest)
    return key if isinstance(key, tuple) else ()


def name_the_column(conn: psycopg.Connection[Any], table: Table, row: RowLike, failure: Failure) -> Failure:
    """Find which column of a bad row PostgreSQL refuses, by casting its values one column at a time.

    Only ever run for a row already isolated as bad, so it costs nothing on the hot path; the client gets
    "column amount (numeric(12,2)): invalid input syntax …" instead of a message that names no column.
    """
    def probe(name: str, sql_type: str) -> sql.Composed:  # the value alone, typed by its column as it is now
        return sql.SQL("SELECT * FROM json_to_record(json_build_object(%s::text, %s::json)) AS x({c} {t})").format(
            c=sql.Identifier(name), t=sql.SQL(sql_type))

    # each value's own JSON, cut out here: PostgreSQL's `doc -> name` reads the whole document, so one value it
    # cannot take as text (a \u0000) failed every probe, and the first column was blamed
    try:
        values = _raw_fields.decode(as_bytes(row.doc))
    except (msgspec.DecodeError, UnicodeDecodeError):
        return failure
    for name in row.keys:
        if name not in table.columns or name not in values:
            continue
        sql_type = _type_now(conn, table, name)
        try:
            with conn.transaction():
                conn.execute(probe(name, sql_type), (name, bytes(values[name]).decode()))
        except psycopg.Error as exc:
            if classify_exception(exc).scope is not Scope.ROW or conn.closed:
                raise IsolationAborted(classify_exception(exc)) from None
            return Failure(failure.code, f"column {name} ({sql_type}): {one_line(exc)}", failure.scope)
    return failure


_TYPE_NOW = ("SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
             " WHERE attrelid = %s::regclass AND attname = %s AND NOT attisdropped")


def _type_now(conn: psycopg.Connection[Any], table: Table, name: str) -> str:
    """The column's type as the server has it now: the catalog entry may predate an ALTER COLUMN … TYPE (the very
    reason a value is refused), and the message must name the type that refused it."""
    try:
        with conn.transaction():
            found = conn.execute(_TYPE_NOW, (table.qualified.as_string(conn), name)).fetchone()
    except psycopg.Error:
        found = None
    return str(found[0]) if found else table.columns[name].sql_type
