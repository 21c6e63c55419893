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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from kapow.errors import Failure, Scope, classify_sqlstate, one_line
from kapow.postgres.pool import retire
from kapow.postgres.statements import Statement

APPLY_FUNCTION = """
CREATE OR REPLACE FUNCTION pg_temp.kapow_apply(stmts text[], fasts text[], payloads text[], bounds int[])
RETURNS TABLE (t int, k int, affected bigint, state text, message text, col text, retried boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
  n bigint;
  counts bigint[];
  fast boolean;
  used_fast boolean;
  failed boolean;
BEGIN
  SET CONSTRAINTS ALL IMMEDIATE;
  FOR ti IN 1 .. coalesce(array_length(bounds, 1), 1) - 1 LOOP
    fast := true;
    retried := false;
    LOOP
      counts := '{}';
      used_fast := false;
      failed := false;
      BEGIN
        FOR ki IN bounds[ti] .. bounds[ti + 1] - 1 LOOP
          IF fast AND fasts[ki] IS NOT NULL THEN
            used_fast := true;
            EXECUTE fasts[ki] USING payloads[ki];
          ELSE
            EXECUTE stmts[ki] USING payloads[ki];
          END IF;
          GET DIAGNOSTICS n = ROW_COUNT;
          counts := counts || n;
        END LOOP;
      EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, col = COLUMN_NAME;
        failed := true;
      END;
      EXIT WHEN NOT (failed AND used_fast AND state IN ('23505', '23P01'));
      fast := false;  -- a conflict met by a plain insert: the table again, every insert ON CONFLICT DO NOTHING
      retried := true;
    END LOOP;
    t := ti;
    IF failed THEN
      k := -1; affected := 0;
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

# A unit whose statements carry more than this closes its connection afterwards (kapow.postgres.pool.retire):
# libpq keeps its buffers at the largest message sent, and a few such connections held ~30 MB each for good.
RETIRE_AFTER_BYTES = 8 * 1024 * 1024
_CALL = "SELECT t, k, affected, state, message, col, retried FROM pg_temp.kapow_apply(%b, %b::text[], %b, %b)"


def configure_connection(conn: psycopg.Connection[Any], *, statement_timeout_ms: int, lock_timeout_ms: int) -> None:
    """Run once per new connection: autocommit, the apply function and the timeouts live as long as it does."""
    conn.autocommit = True
    conn.execute(APPLY_FUNCTION)
    conn.execute("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
                 (str(statement_timeout_ms), str(lock_timeout_ms)))
    if conn.info.server_version >= 140000:
        # a writer killed while its statement waits (on a lock, say) must not have that statement land later:
        # the server checks every second that the client is still there, and aborts if not
        conn.execute("SELECT set_config('client_connection_check_interval', '1000', false)")


@dataclass(slots=True)
class TableOutcome:
    """What one table's statements did in a unit: rows affected per statement, or the failure that stopped them."""

    affected: list[int]
    failure: Failure | None = None
    column: str | None = None  # the column the server named, when it did (not-null violations)
    conflicted: bool = False  # its plain inserts met a duplicate: applied again with ON CONFLICT DO NOTHING


def call(conn: psycopg.Connection[Any], stmts: list[str], payloads: list[str], bounds: list[int],
         fasts: list[str | None] | None = None) -> list[Any]:
    """One call of the apply function; raises the database's exception when the call itself fails."""
    with conn.cursor() as cur:
        cur.execute(_CALL, (stmts, fasts if fasts is not None else [None] * len(stmts), payloads, bounds))
        return cur.fetchall()


def apply_unit(conn: psycopg.Connection[Any], tables: Sequence[Sequence[Statement]],
               plain_first: Sequence[bool] | None = None) -> list[TableOutcome]:
    """Apply each table's statements, fenced per table, in one transaction; one outcome per table, in order.

    A table whose ``plain_first`` is true has its inserts tried first as plain ``INSERT``s: PostgreSQL's
    speculative insertion (``ON CONFLICT``) costs about a fifth more per row, and a new row rarely conflicts.
    When one does (a replay after a crash, a client resending), the table is rolled back to its fence and
    applied again with ``ON CONFLICT DO NOTHING``, and its outcome says ``conflicted`` so that the caller stops
    trying plain inserts on it for a while. Raises the database's exception when the whole call fails
    (connection lost, statement timeout).
    """
    stmts: list[str] = []
    fasts: list[str | None] = []
    payloads: list[str] = []
    bounds = [1]
    for t, statements in enumerate(tables):
        plain = plain_first is not None and plain_first[t]
        for statement in statements:
            stmts.append(statement.text)
            fasts.append(statement.plain if plain else None)
            payloads.append(statement.payload())
        bounds.append(len(stmts) + 1)
    if sum(map(len, payloads)) > RETIRE_AFTER_BYTES:
        retire(conn)
    outcomes = [TableOutcome([]) for _ in tables]
    for t, _k, affected, state, message, column, conflicted in call(conn, stmts, payloads, bounds, fasts):
        outcome = outcomes[t - 1]
        outcome.conflicted = bool(conflicted)
        if state is None:
            outcome.affected.append(int(affected))
        else:
            code, scope = classify_sqlstate(state)
            outcome.failure = Failure(code, one_line(message or state), scope)
            outcome.column = column or None
    for outcome, statements in zip(outcomes, tables, strict=True):
        if outcome.failure is None and len(outcome.affected) != len(statements):  # pragma: no cover - a bug
            outcome.failure = Failure(classify_sqlstate("XX000")[0], "apply function returned short", Scope.TABLE)
    return outcomes
