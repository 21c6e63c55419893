"""What a destination table looks like: columns, their kinds, required columns and whether it has a unique key.

Sort validates every packet against this, so it is cached per (vanity, database, schema, table). An entry
lives for ``ttl`` seconds and is dropped early when the database says the table changed (an undefined-column
or undefined-table error during persist). Missing tables are cached too, for a shorter time, so that a flood of
packets for a table that does not exist costs one catalog query, not one per packet.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

_CATALOG_SQL = """
SELECT c.oid::int8,
       c.relkind::text,
       has_table_privilege(c.oid, 'INSERT'),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
               AND i.indpred IS NULL),
       coalesce(json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory,
                                          t.typname, a.attnotnull,
                                          a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                                          a.attgenerated <> '' OR a.attidentity = 'a')
                         ORDER BY a.attnum)
                FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), '[]')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid
LEFT JOIN pg_type t ON t.oid = a.atttypid
WHERE n.nspname = %s AND c.relname = %s
GROUP BY c.oid, c.relkind
"""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql_type: str  # as format_type() spells it, e.g. "numeric(12,2)", for messages
    category: str
    not_null: bool
    has_default: bool
    generated: bool  # cannot be written (GENERATED ALWAYS)


@dataclass(slots=True)
class Table:
    """One destination table as the catalog saw it."""

    schema: str
    name: str
    columns: dict[str, Column]
    has_unique_key: bool
    can_insert: bool
    required: frozenset[str]  # NOT NULL without a default: every packet must give these
    loaded_at: float = field(default_factory=time.monotonic)
    # keyset -> None (fine) or an error message; packets to one table nearly always share their keyset
    keyset_verdicts: dict[tuple[str, ...], str | None] = field(default_factory=dict)

    @property
    def qualified(self) -> sql.Identifier:
        """``"schema"."table"``, quoted by psycopg: names reach SQL only this way."""
        return sql.Identifier(self.schema, self.name)


def load_table(conn: psycopg.Connection[Any], schema: str, table: str) -> Table | None:
    """Read one table's shape; ``None`` when there is no such table (or it is not a table)."""
    with conn.cursor() as cur:
        cur.execute(_CATALOG_SQL, (schema, table))
        row = cur.fetchone()
    conn.rollback()  # leave the connection idle: the catalog read needs no transaction of its own
    if row is None or row[1] not in ("r", "p"):
        return None
    columns: dict[str, Column] = {}
    for name, type_, category, _typname, not_null, has_default, generated in row[4]:
        columns[name] = Column(name, type_, category, not_null, has_default, generated)
    required = frozenset(c.name for c in columns.values() if c.not_null and not c.has_default)
    return Table(schema, table, columns, bool(row[3]), bool(row[2]), required)


class Catalog:
    """Thread-safe cache of :class:`Table` entries, keyed by (vanity, database, schema, table)."""

    def __init__(self, *, ttl: float = 60.0, missing_ttl: float = 5.0) -> None:
        self._ttl = ttl
        self._missing_ttl = missing_ttl
        self._entries: dict[tuple[str, str, str, str], tuple[Table | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str, str]) -> tuple[bool, Table | None]:
        """(cached?, table). A cached ``None`` means the table is known not to exist."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        table, at = entry
        if time.monotonic() - at > (self._ttl if table is not None else self._missing_ttl):
            return False, None
        return True, table

    def age(self, key: tuple[str, str, str, str]) -> float:
        """Seconds since the entry was loaded (infinite when there is none)."""
        entry = self._entries.get(key)
        return time.monotonic() - entry[1] if entry is not None else float("inf")

    def put(self, key: tuple[str, str, str, str], table: Table | None) -> None:
        with self._lock:
            self._entries[key] = (table, time.monotonic())

    def invalidate(self, key: tuple[str, str, str, str]) -> None:
        with self._lock:
            self._entries.pop(key, None)
