"""Statement shapes a connection runs again and again, as functions of their own, so PostgreSQL plans each once.

The apply function (:mod:`kapow.postgres.writer`) runs each statement by ``EXECUTE``, which parses, analyses and
plans its text at every call: ~40 µs a statement on the benchmark machine, where the rest of a one-row insert
costs ~60. Traffic spread over a thousand tables gives each statement a few rows, so that is most of
PostgreSQL's work per row there, and a table of two unique keys written in offset order runs a statement per run
of alike rows (docs/BENCHMARKS.md). A PL/pgSQL function keeps the plan of the statement in its body for the
session, so a shape a connection has run :data:`PLAN_AFTER` times becomes ``pg_temp.kapow_p<n>($1)`` on that
connection, and the apply function calls it instead of planning the text again.

Everything here is bounded, since the shapes come from clients' tables and names: at most :data:`MAX_PLANNED`
functions a connection (~45 kB of the server's memory each, its plan included, measured), and at most
:data:`MAX_COUNTED` texts counted before the counts start again. A function unused for :data:`IDLE_S` makes room
for a new one (a table changed, its old shape gone); one in use never does, so that more shapes than room, used in
turn, keep the first ones planned instead of making and dropping functions at every unit. Functions are
made only between transactions (a rolled-back ``CREATE`` would leave a name here with no function behind it), and
a text whose function could not be made is run as text, as before. A :class:`Plans` belongs to one connection
and lives as long as it does (the functions are the session's); a connection is lent to one thread at a time, so
one thread at a time uses it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

PLAN_AFTER = 16  # uses of one text on a connection before it is given a function: its making (~0.25 ms) and first
# call (~0.6 ms, compiling) cost what ~17 calls save, so only a shape that proved frequent is made one
MAX_PLANNED = 256  # functions a connection keeps
IDLE_S = 300.0  # a function unused this long may be dropped to make room for another
MAX_COUNTED = 4096  # texts counted before the counts start again
# Texts are client-shaped (a wide table's column subsets): a longer one is never planned, and the texts counted or
# refused hold at most COUNTED_BYTES each before they start again. Counted by number alone, 4,096 texts of a
# 1,600-column table's statements could hold ~200 MB a connection (a review).
MAX_TEXT = 16 * 1024
COUNTED_BYTES = 2 * 1024 * 1024
# Only statements that return no rows can be a function's body as they are (a SELECT would need a destination)
PLANNABLE = ("INSERT ", "DELETE ", "UPDATE ")
CALL_PREFIX = "SELECT pg_temp.kapow_p"  # what the apply function knows a planned call by (it returns its count)

# ``#variable_conflict use_column``: a table's column that happens to be called ``kapow_n`` is still its column.
_BODY = ("#variable_conflict use_column\nDECLARE kapow_n bigint;\nBEGIN\n{text};\n"
         "GET DIAGNOSTICS kapow_n = ROW_COUNT;\nRETURN kapow_n;\nEND")


class Plans:
    """The functions one connection has for the statement texts it runs most (see the module)."""

    def __init__(self) -> None:
        self._calls: OrderedDict[str, str] = OrderedDict()  # text -> the SQL that calls its function (LRU first)
        self._names: dict[str, str] = {}  # text -> its function's name
        self._uses: dict[str, int] = {}
        self._used: dict[str, float] = {}  # text -> when its function was last called (time.monotonic)
        self._drop: list[str] = []  # names of functions given up for room, dropped with the next ones made
        self._refused: set[str] = set()  # texts whose function could not be made (not tried again)
        self._uses_bytes = 0
        self._refused_bytes = 0
        self._next = 0
        self.made = 0  # functions made over the connection's life (tests, and the curious)

    def __len__(self) -> int:
        return len(self._calls)

    def texts(self, conn: psycopg.Connection[Any], texts: list[str], *, count: bool = True) -> list[str]:
        """``texts`` with each planned one replaced by the call of its function; with ``count``, making functions
        for the texts that have now been used :data:`PLAN_AFTER` times (when the connection is between
        transactions and has room: :meth:`_room`)."""
        calls, uses, used = self._calls, self._uses, self._used
        now = time.monotonic()
        due: list[str] = []
        for text in dict.fromkeys(texts):
            if text in calls:
                calls.move_to_end(text)
                used[text] = now
                continue
            if not count or len(text) > MAX_TEXT or text in self._refused or not text.startswith(PLANNABLE):
                continue
            n = uses.get(text, 0) + 1
            if n >= PLAN_AFTER:
                due.append(text)
            elif text in uses:
                uses[text] = n
            elif len(uses) < MAX_COUNTED and self._uses_bytes + len(text) <= COUNTED_BYTES:
                uses[text] = n
                self._uses_bytes += len(text)
            else:
                uses.clear()
                self._uses_bytes = 0
        if due and conn.info.transaction_status == TransactionStatus.IDLE:
            due = due[:self._room(len(due), now)]
            if due:
                self._make(conn, due, now)
        return [calls.get(t, t) for t in texts]

    def _room(self, wanted: int, now: float) -> int:
        """Make room for up to ``wanted`` functions by dropping those unused for :data:`IDLE_S` (least recently
        used first); how many fit. Those in use are never dropped for new ones: more shapes than room, used in
        turn (a thousand tables), would otherwise drop and make functions at every unit."""
        free = MAX_PLANNED - len(self._calls)
        while free < wanted and self._calls:
            oldest = next(iter(self._calls))
            if now - self._used[oldest] < IDLE_S:
                break
            del self._calls[oldest], self._used[oldest]
            self._drop.append(self._names.pop(oldest))
            free += 1
        return max(0, free)

    def _make(self, conn: psycopg.Connection[Any], due: list[str], now: float) -> None:
        """One round trip: drop the functions given up for room, then make those of ``due``."""
        drop, self._drop = self._drop, []
        parts: list[sql.Composable] = [sql.SQL("DROP FUNCTION IF EXISTS pg_temp.{}(text)").format(
            sql.Identifier(name)) for name in drop]
        made: dict[str, str] = {}
        for text in due:
            if self._uses.pop(text, None) is not None:
                self._uses_bytes -= len(text)
            name = f"kapow_p{self._next}"
            self._next += 1
            made[text] = name
            parts.append(sql.SQL("CREATE FUNCTION pg_temp.{}(text) RETURNS bigint LANGUAGE plpgsql AS {}").format(
                sql.Identifier(name), sql.Literal(_BODY.format(text=text))))
        try:
            conn.execute(sql.SQL(";\n").join(parts).as_string(conn))  # no parameters: one implicit transaction
        except psycopg.Error:
            if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                raise  # the connection itself failed: its caller learns it as from any statement
            self._refused.update(due)  # (a text PL/pgSQL cannot take as a body: it runs as text, as before)
            self._refused_bytes += sum(map(len, due))
            self._drop = drop + self._drop  # (rolled back with the rest: dropped with the next ones made)
            if len(self._refused) > MAX_COUNTED or self._refused_bytes > COUNTED_BYTES:
                self._refused.clear()
                self._refused_bytes = 0
            return
        for text, name in made.items():
            self._names[text] = name
            self._calls[text] = f"{CALL_PREFIX}{name[len('kapow_p'):]}($1)"
            self._used[text] = now
        self.made += len(made)


def attach(conn: psycopg.Connection[Any]) -> None:
    """Give ``conn`` its own :class:`Plans` (kapow.postgres.writer.configure_connection, once per connection)."""
    setattr(conn, _ATTRIBUTE, Plans())


def of(conn: psycopg.Connection[Any]) -> Plans | None:
    """The :class:`Plans` of ``conn``, or None for a connection that was not given one."""
    found = getattr(conn, _ATTRIBUTE, None)
    return found if isinstance(found, Plans) else None


_ATTRIBUTE = "kapow_plans"
