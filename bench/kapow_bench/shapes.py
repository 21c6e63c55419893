"""The two table shapes the benchmark lands, and the rows that fill them, generated without a random source per
row so that 300,000 rows cost well under a second and every run lands the same data.

* ``events`` (the ``250`` size): the peer's schema (``event_id``, ``account``, ``kind``, ``amount`` as an exact
  decimal string, ``currency``, ``created_at`` with microseconds, ``note`` left NULL); with KaPoW's shortest
  address the Kafka value is ~250 bytes. Workloads that update or delete add ``rev``, the packet's sequence
  number, so that the final state can be checked (and guarded with ``"version": "rev"``).
* ``ids`` (the ``12`` size): ``{"id": …}``, the 10-15 bytes of data of the seed's small-packet test.

Both end in ``landed_at DEFAULT clock_timestamp()``: the database stamps each row as it inserts it, so the clock of
the last row and every latency come from the database itself, not from how often someone polls.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]

KINDS = ("payment", "refund", "chargeback", "fee")
_BASE = dt.datetime(2026, 11, 24, 10, 0, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Shape:
    """A table shape: its DDL (``{table}`` to fill), its columns in COPY order, and its key column."""

    name: str
    ddl: str
    columns: tuple[str, ...]
    key: str

    def create(self, table: str) -> str:
        return self.ddl.replace("{table}", f'"{table}"')


EVENTS = Shape("events", """CREATE TABLE {table} (
  event_id bigint PRIMARY KEY, account text NOT NULL, kind text NOT NULL, amount numeric(12,2) NOT NULL,
  currency text NOT NULL, created_at timestamptz NOT NULL, note text,
  landed_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
               ("event_id", "account", "kind", "amount", "currency", "created_at"), "event_id")
EVENTS_REV = Shape("events+rev", """CREATE TABLE {table} (
  event_id bigint PRIMARY KEY, account text NOT NULL, kind text NOT NULL, amount numeric(12,2) NOT NULL,
  currency text NOT NULL, created_at timestamptz NOT NULL, note text, rev bigint NOT NULL DEFAULT 0,
  landed_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
                   ("event_id", "account", "kind", "amount", "currency", "created_at", "rev"), "event_id")
IDS = Shape("ids", """CREATE TABLE {table} (
  id bigint PRIMARY KEY, landed_at timestamptz NOT NULL DEFAULT clock_timestamp())""", ("id",), "id")

# Upserts, deletes and change events do not all insert a row, so ``landed_at`` cannot date the last one: each
# table gets statement-level triggers that stamp every statement that touches it into ``bench_clock``, as it
# starts and as it ends (two rows per statement, not per row: their cost is noise next to a batch). The run's
# first stamp is then the start of the first statement, its last the end of the last one.
CLOCK_DDL = """
CREATE TABLE IF NOT EXISTS bench_clock (at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION bench_stamp() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO bench_clock DEFAULT VALUES; RETURN NULL; END $$;
"""
CLOCK_TRIGGER = ('CREATE TRIGGER bench_start BEFORE INSERT OR UPDATE OR DELETE ON "{table}" '
                 "FOR EACH STATEMENT EXECUTE FUNCTION bench_stamp();\n"
                 'CREATE TRIGGER bench_end AFTER INSERT OR UPDATE OR DELETE ON "{table}" '
                 "FOR EACH STATEMENT EXECUTE FUNCTION bench_stamp()")


def timestamp(i: int) -> str:
    """A strictly increasing ``created_at`` with microseconds, as ISO 8601 text (the writer's input form)."""
    t = _BASE + dt.timedelta(microseconds=i * 1000 + (i * 37) % 1000)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_row(i: int, key: int, rev: int | None = None) -> Row:
    """The ``i``-th event, for row ``key``; ``rev`` (when given) makes it a revision of that row."""
    cents = (i * 7919 + key * 104_729) % 9_999_900 + 100
    row: Row = {"event_id": key, "account": f"acct-{key % 5000:05d}", "kind": KINDS[i % 4],
                "amount": f"{cents // 100}.{cents % 100:02d}", "currency": "USD", "created_at": timestamp(i)}
    if rev is not None:
        row["rev"] = rev
    return row


def id_row(key: int) -> Row:
    return {"id": key}


def copy_line(row: Row, columns: tuple[str, ...]) -> bytes:
    """One row as a line of COPY text (every value here is plain: no tab, newline or backslash to escape)."""
    return ("\t".join("\\N" if row.get(c) is None else str(row[c]) for c in columns) + "\n").encode()
