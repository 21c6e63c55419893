"""Write the statements of many tables of one database in ONE round trip and ONE transaction, each table fenced.

Traffic spread over a thousand tables used to cost a transaction, a COPY, an INSERT and a commit (with its WAL
flush) per table per batch: the rate fell to 3 % of the one-table rate. Now a unit of work for one database is
one call of a small PL/pgSQL function, ``pg_temp.kapow_apply``, created once per connection: it runs every
table's statements in order, each table inside its own ``BEGIN … EXCEPTION`` block (a subtransaction), and
reports per table what each statement did or the error that stopped it. The call is a single statement on an
autocommit connection, so it is its own transaction: one round trip and one commit for the whole unit.

The fence is what keeps isolation at a thousand tables: a table whose rows are bad, or that is locked (its
statement fails after ``lock_timeout``), is rolled back to its own start while the others commit; the caller then
isolates its bad rows or holds the locked table alone (:mod:`kapow.pipeline.lane`). Deferred constraints are made
immediate first (``SET CONSTRAINTS ALL IMMEDIATE``), so a deferred foreign key fails its own statement, inside the
fence, instead of the whole unit at COMMIT. A statement timeout cannot be caught inside PL/pgSQL, so it fails the
call; the caller then writes the tables one by one to find the slow one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from kapow.errors import Failure, Scope, classify_fenced, classify_sqlstate, one_line
from kapow.postgres import plans
from kapow.postgres.catalog import Table
from kapow.postgres.pool import retire
from kapow.postgres.statements import INSERT, NULL_KEY_STATE, Statement, null_guard

APPLY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION pg_temp.kapow_apply(stmts text[], fasts text[], payloads text[], bounds int[])
RETURNS TABLE (t int, k int, affected bigint, state text, message text, col text, retried boolean,
               ms double precision)
LANGUAGE plpgsql AS $fn$
DECLARE
  started timestamptz;
  stmt text;
  n bigint;
  counts bigint[];
  fast boolean;
  used_fast boolean;
  failed boolean;
  at int;
BEGIN
  SET CONSTRAINTS ALL IMMEDIATE;
  FOR ti IN 1 .. coalesce(array_length(bounds, 1), 1) - 1 LOOP
    started := clock_timestamp();
    fast := true;
    retried := false;
    LOOP
      counts := '{{}}';
      used_fast := false;
      failed := false;
      BEGIN
        FOR ki IN bounds[ti] .. bounds[ti + 1] - 1 LOOP
          at := ki;
          IF fast AND fasts[ki] IS NOT NULL THEN
            used_fast := true;
            stmt := fasts[ki];
          ELSE
            stmt := stmts[ki];
          END IF;
          IF starts_with(stmt, '{plans.CALL_PREFIX}') THEN  -- a shape's own function (kapow.postgres.plans): its count
            EXECUTE stmt INTO n USING payloads[ki];
          ELSE
            EXECUTE stmt USING payloads[ki];
            GET DIAGNOSTICS n = ROW_COUNT;
          END IF;
          counts := counts || n;
        END LOOP;
      -- OTHERS leaves out a trigger's ASSERT (P0004): it would abort the whole call, and every table with it
      EXCEPTION WHEN assert_failure OR OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, col = COLUMN_NAME;
        failed := true;
      END;
      EXIT WHEN NOT (failed AND used_fast AND state IN ('23505', '23P01'));
      fast := false;  -- a conflict met by a plain insert: the table again, every insert ON CONFLICT DO NOTHING
      retried := true;
    END LOOP;
    t := ti;
    ms := 1000 * extract(epoch FROM clock_timestamp() - started);
    IF failed THEN
      k := at; affected := 0;  -- the statement that failed (kapow.postgres.isolate starts there)
      RETURN NEXT;
    ELSE
      state := NULL; message := NULL; col := NULL;
      FOR j IN 1 .. coalesce(array_length(counts, 1), 0) LOOP
        k := bounds[ti] + j - 1; affected := counts[j];
        RETURN NEXT;
      END LOOP;
    END IF;
  END LOOP;
END
$fn$
"""

# Isolation's last step (kapow.postgres.isolate): one statement applied element by element, each in a
# subtransaction of its own, in one call. A range of a few dozen rows with bad ones among them costs one round trip
# instead of a bisection's two a level: a stream of bad values was isolated at ~280 rows a second, and the good
# rows of its table waited behind it (a hostile run: 170 s).
EACH_FUNCTION = """
CREATE OR REPLACE FUNCTION pg_temp.kapow_each(stmt text, payloads text[], tbl text)
RETURNS TABLE(i int, affected bigint, state text, message text, col text, ctype text)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  k text;
  v json;
  t text;
BEGIN
  FOR pi IN 1 .. coalesce(array_length(payloads, 1), 0) LOOP
    i := pi;
    state := NULL; message := NULL; col := NULL; ctype := NULL; affected := 0;
    BEGIN
      EXECUTE stmt USING payloads[pi];
      GET DIAGNOSTICS affected = ROW_COUNT;
    EXCEPTION WHEN assert_failure OR OTHERS THEN
      GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, col = COLUMN_NAME;
    END;
    -- a value its column refuses, the column unnamed: each value cast alone until one fails (what
    -- kapow.postgres.isolate.name_the_column does with a round trip a column)
    IF state LIKE '22%' AND coalesce(col, '') = '' THEN
      BEGIN
        -- the value alone, typed by its column (a whole row of the table's type held a NULL of every other
        -- column: a NOT NULL domain among them failed every probe, and the first column was blamed)
        FOR k, v IN SELECT e.key, e.value FROM json_each((payloads[pi]::json) -> 0) e LOOP
          t := NULL;
          SELECT format_type(a.atttypid, a.atttypmod) INTO t FROM pg_attribute a
           WHERE a.attrelid = tbl::regclass AND a.attname = k AND a.attnum > 0 AND NOT a.attisdropped;
          CONTINUE WHEN t IS NULL;
          BEGIN
            EXECUTE format('SELECT * FROM json_to_record(json_build_object(%L, $1::json)) AS x(%I %s)', k, k, t)
              USING v;
          EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS message = MESSAGE_TEXT;
            col := k;
            ctype := t;
            EXIT;
          END;
        END LOOP;
      EXCEPTION WHEN OTHERS THEN
        NULL;  -- (the column stays unnamed: the caller names it its own way)
      END;
    END IF;
    RETURN NEXT;
  END LOOP;
END
$fn$
"""

# Raised by the statements' null guard (kapow.postgres.statements.null_guard) for a row whose unique key is null:
# inside the table's fence, so that the row is isolated and refused as the client's (missing_key).
REFUSE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION pg_temp.kapow_refuse(reason text, colname text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
  RAISE EXCEPTION USING ERRCODE = '{NULL_KEY_STATE}', MESSAGE = reason, COLUMN = colname;
END
$fn$
"""

# A unit whose statements carry more than this closes its connection afterwards (kapow.postgres.pool.retire):
# libpq keeps its buffers at the largest message sent, and a few such connections held ~30 MB each for good.
RETIRE_AFTER_BYTES = 8 * 1024 * 1024
_CALL = "SELECT t, k, affected, state, message, col, retried, ms FROM pg_temp.kapow_apply(%b, %b::text[], %b, %b)"


def configure_connection(conn: psycopg.Connection[Any], *, statement_timeout_ms: int, lock_timeout_ms: int) -> None:
    """Run once per new connection: autocommit, the apply function and the timeouts live as long as it does."""
    conn.autocommit = True
    conn.execute(f"{APPLY_FUNCTION};{REFUSE_FUNCTION};{EACH_FUNCTION}")
    plans.attach(conn)  # no parameters: several statements, one round trip
    # plan_cache_mode: a shape's function (kapow.postgres.plans) would otherwise plan its statement anew at each of
    # its first five calls, as text does; every statement here takes one JSON array, whose contents no plan reads
    # jit: a unit's catalog read of 10,000 unknown table names took 2.1 s, 1.8 s of it compiling the query (its
    # cost grows with the names, past jit_above_cost); nothing a writer runs is long enough to win it back
    conn.execute("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false),"
                 " set_config('plan_cache_mode', 'force_generic_plan', false), set_config('jit', 'off', false)",
                 (str(statement_timeout_ms), str(lock_timeout_ms)))
    if conn.info.server_version >= 140000:
        # a writer killed while its statement waits (on a lock, say) must not have that statement land later:
        # the server checks every second that the client is still there, and aborts if not
        conn.execute("SELECT set_config('client_connection_check_interval', '1000', false)")


# A table's inserts are COPYed when they are this many rows or more (and can be: Statement.copy_payload); fewer go
# in the one apply call with the others. A COPY costs two round trips of its own (it, and the savepoint after it)
# and ~0.3 ms of the writer's CPU: at 256 rows, traffic spread over 100 tables lost a quarter of its rate.
COPY_MIN_ROWS = 1000
_LOCKED = "55P03"  # lock_not_available: a lock_timeout met by a COPY is the table's failure, not waited for twice
_CANCELED = "57014"  # query_canceled (statement_timeout): fails the whole call, as it does in the apply function


@dataclass(slots=True)
class TableOutcome:
    """What one table's statements did in a unit: rows affected per statement, or the failure that stopped them."""

    affected: list[int]
    failure: Failure | None = None
    column: str | None = None  # the column the server named, when it did (not-null violations)
    conflicted: bool = False  # its plain inserts met a duplicate: applied again with ON CONFLICT DO NOTHING
    copied: bool = False  # its inserts went in by COPY
    copy_failed: bool = False  # a COPY of its inserts failed (rolled back) or its rows could not be COPY text
    seconds: float = 0.0  # what its statements took in the database (a slow table is then written alone)


def copy_text(table: Table, statement: Statement) -> str | None:
    """The COPY of ``statement``'s columns into ``table``, or None when a column's type cannot take COPY's text
    as ``json_populate_recordset`` takes JSON (json, arrays, composites: kapow.postgres.catalog)."""
    columns, nulls_ok = statement.columns, statement.nulls_ok

    def build() -> str | None:
        if not columns or not all(c in table.columns and table.columns[c].copy_safe for c in columns):
            return None
        if not nulls_ok and null_guard(table, INSERT, columns, ()) is not None:
            return None  # a null unique key must be refused, which COPY cannot
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        return sql.SQL("COPY {tbl} ({cols}) FROM STDIN (FORMAT csv, NULL 'null')").format(
            tbl=table.qualified, cols=cols).as_string(None)

    return table.derived(("copy", columns, nulls_ok), build)


def call(conn: psycopg.Connection[Any], stmts: list[str], payloads: list[str], bounds: list[int],
         fasts: list[str | None] | None = None) -> list[Any]:
    """One call of the apply function; raises the database's exception when the call itself fails. The texts
    the connection runs often go as calls of their own functions (:mod:`kapow.postgres.plans`)."""
    known = plans.of(conn)
    if known is not None and fasts is None:
        stmts = known.texts(conn, stmts)
    elif known is not None and fasts is not None:  # what runs first is counted (not the fallback of a plain insert)
        first = known.texts(conn, [s if f is None else f for s, f in zip(stmts, fasts, strict=True)])
        fallback = known.texts(conn, stmts, count=False)
        stmts = [r if f is None else b for r, b, f in zip(first, fallback, fasts, strict=True)]
        fasts = [r if f is not None else None for r, f in zip(first, fasts, strict=True)]
    with conn.cursor() as cur:
        cur.execute(_CALL, (stmts, fasts if fasts is not None else [None] * len(stmts), payloads, bounds))
        return cur.fetchall()


def apply_unit(conn: psycopg.Connection[Any], tables: Sequence[Sequence[Statement]],
               plain_first: Sequence[bool] | None = None,
               copy_into: Sequence[Table | None] | None = None) -> list[TableOutcome]:
    """Apply each table's statements, fenced per table, in one transaction; one outcome per table, in order.

    A table whose ``plain_first`` is true has its inserts tried first as plain ``INSERT``s: PostgreSQL's
    speculative insertion (``ON CONFLICT``) costs about a fifth more per row, and a new row rarely conflicts.
    When one does (a replay after a crash, a client resending), the table is rolled back to its fence and
    applied again with ``ON CONFLICT DO NOTHING``, and its outcome says ``conflicted`` so that the caller stops
    trying plain inserts on it for a while. Raises the database's exception when the whole call fails
    (connection lost, statement timeout).

    A table given in ``copy_into`` (its plain inserts tried first too) whose one statement inserts at least
    :data:`COPY_MIN_ROWS` rows that can be COPYed (:meth:`Statement.copy_payload`, :func:`copy_text`) is COPYed
    instead, in the same transaction, fenced by a savepoint: PostgreSQL spends about 60 % of the CPU per row of
    ``json_populate_recordset``. A COPY that fails is rolled back to its savepoint and the table applied the
    usual way (the same rows land, the same errors are reported), and its outcome says ``copy_failed`` so that
    the caller stops COPYing it for a while; a lock it waited for in vain is its failure at once, as in the
    apply function, and a statement timeout fails the whole call, as there.
    """
    outcomes = [TableOutcome([]) for _ in tables]
    # COPY's text goes as UTF-8 bytes, unconverted: only to a database whose client encoding is UTF-8
    copies = _copies(tables, plain_first, copy_into, outcomes) if conn.info.encoding == "utf-8" else []
    if not copies:
        _apply(conn, tables, plain_first, outcomes, range(len(tables)))
        return outcomes
    if sum(len(c[2]) for c in copies) > RETIRE_AFTER_BYTES:
        retire(conn)
    # BEGIN goes with the rest, not alone (psycopg's conn.transaction()): a round trip fewer, and each one costs
    # this thread the GIL, which the sorting thread holds for up to 5 ms (docs/BENCHMARKS.md, "Where a unit's
    # time goes"). As the apply function: a deferred check fails its own table; the savepoint fences the COPYs.
    try:
        conn.execute("BEGIN; SET CONSTRAINTS ALL IMMEDIATE; SAVEPOINT kapow_copy")  # canceled after BEGIN: rolled back
        for n, (t, text, payload) in enumerate(copies):
            _copy(conn, text, payload, outcomes[t], last=n == len(copies) - 1)
        rest = [t for t in range(len(tables)) if not outcomes[t].copied and outcomes[t].failure is None]
        _apply(conn, tables, plain_first, outcomes, rest)
    except BaseException:
        _rollback(conn)
        raise
    conn.execute("COMMIT")
    return outcomes


def _rollback(conn: psycopg.Connection[Any]) -> None:
    """End a unit's transaction that a failure stopped, so that the connection goes back to its pool idle."""
    if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:  # the connection broke meanwhile (the server rolls back itself) or is busy: the pool
        pass  # checks a connection it gets back and discards one that is not idle


def _copies(tables: Sequence[Sequence[Statement]], plain_first: Sequence[bool] | None,
            copy_into: Sequence[Table | None] | None, outcomes: list[TableOutcome]) -> list[tuple[int, str, bytes]]:
    """(table index, COPY statement, its text) for each table whose inserts go in by COPY. A table whose rows
    could not be made COPY text (a backslash, a float, ...) is marked ``copy_failed``, so that a stream of such
    rows is not formatted twice, as CSV and then as JSON, every unit."""
    out: list[tuple[int, str, bytes]] = []
    if copy_into is None or plain_first is None:
        return out
    for t, statements in enumerate(tables):
        table = copy_into[t]
        if table is None or not plain_first[t] or len(statements) != 1:
            continue
        statement = statements[0]
        if statement.kind != INSERT or len(statement.elements) < COPY_MIN_ROWS:
            continue
        text = copy_text(table, statement)
        payload = statement.copy_payload() if text is not None else None
        if text is not None and payload is not None:
            out.append((t, text, payload))
        elif text is not None:
            outcomes[t].copy_failed = True
    return out


def _copy(conn: psycopg.Connection[Any], text: str, payload: bytes, outcome: TableOutcome, *, last: bool) -> None:
    """One COPY behind the savepoint ``kapow_copy`` (set), leaving it set for the next one (and COMMIT to release
    the last): one round trip besides the COPY's own."""
    started = time.monotonic()
    try:
        with conn.cursor() as cur:
            with cur.copy(text) as copy:
                copy.write(payload)
            count = cur.rowcount
    except psycopg.Error as exc:
        if conn.closed or exc.sqlstate is None or exc.sqlstate == _CANCELED:
            raise
        conn.execute("ROLLBACK TO SAVEPOINT kapow_copy")  # the savepoint stays, for the next COPY
        outcome.copy_failed = True
        if exc.sqlstate == _LOCKED:
            code, scope = classify_sqlstate(exc.sqlstate)
            outcome.failure = Failure(code, one_line(str(exc.diag.message_primary or exc)), scope)
        return
    if not last:
        conn.execute("RELEASE SAVEPOINT kapow_copy; SAVEPOINT kapow_copy")
    outcome.affected = [count]
    outcome.copied = True
    outcome.seconds = time.monotonic() - started


def _apply(conn: psycopg.Connection[Any], tables: Sequence[Sequence[Statement]], plain_first: Sequence[bool] | None,
           outcomes: list[TableOutcome], which: Sequence[int]) -> None:
    """The apply function over the tables ``which``; their outcomes filled in."""
    if not which:
        return
    stmts: list[str] = []
    fasts: list[str | None] = []
    payloads: list[str] = []
    bounds = [1]
    for t in which:
        plain = plain_first is not None and plain_first[t]
        for statement in tables[t]:
            stmts.append(statement.text)
            fasts.append(statement.plain if plain else None)
            payloads.append(statement.payload())
        bounds.append(len(stmts) + 1)
    if sum(map(len, payloads)) > RETIRE_AFTER_BYTES:
        retire(conn)
    for i, _k, affected, state, message, column, conflicted, ms in call(conn, stmts, payloads, bounds, fasts):
        t = which[i - 1]
        outcome = outcomes[t]
        outcome.conflicted = bool(conflicted)
        outcome.seconds = (ms or 0.0) / 1000  # the table's, on each of its rows
        if state is None:
            outcome.affected.append(int(affected))
        else:
            code, scope = classify_fenced(state)
            outcome.failure = Failure(code, one_line(message or state), scope)
            outcome.column = column or None
    for t in which:
        outcome = outcomes[t]
        if outcome.failure is None and len(outcome.affected) != len(tables[t]):  # pragma: no cover - a bug
            outcome.failure = Failure(classify_sqlstate("XX000")[0], "apply function returned short", Scope.TABLE)
