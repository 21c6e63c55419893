"""What a destination table looks like: columns, required columns, unique keys and the writer's privileges.

Every row is validated against this (:mod:`kapow.postgres.validate`) and every statement is built from it
(:mod:`kapow.postgres.statements`), so it is cached per (vanity, database, schema, table). Traffic may spread
over thousands of tables, so the cache is bounded in bytes and evicts the least recently used entry; missing
tables are cached too, for a few seconds, so that a flood of packets for a table that does not exist costs one
catalog query, not one per packet. Tables are read in bulk: one query for every table a transaction is about to
write, never one query per table.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import psycopg
from psycopg import sql

from kapow.contract import TableKey

_CATALOG_SQL = """
WITH wanted AS (SELECT * FROM unnest(%s::text[], %s::text[]) AS w(nspname, relname))
SELECT w.nspname, w.relname, c.oid IS NOT NULL, coalesce(c.relkind::text, ''),
       -- column grants count (GRANT INSERT (id, v)): a statement on a column not granted is refused by the server,
       -- row by row (kapow.pipeline.unit)
       coalesce(has_any_column_privilege(c.oid, 'INSERT'), false),
       coalesce(has_any_column_privilege(c.oid, 'UPDATE'), false),
       coalesce(has_table_privilege(c.oid, 'DELETE'), false),
       coalesce((SELECT json_agg(json_build_array(i.indisprimary, i.indimmediate,
                   (SELECT json_agg(a.attname ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum),
                   -- equal as the column's type and collation say (what DISTINCT ON and = compare): every key
                   -- column indexed with its own collation and its type's default operator class
                   (SELECT bool_and(k.coll = a.attcollation AND o.opcdefault AND (o.opcintype = a.atttypid OR
                           NOT EXISTS (SELECT 1 FROM pg_opclass d WHERE d.opcmethod = o.opcmethod AND d.opcdefault
                                       AND d.opcintype = a.atttypid)))
                    FROM unnest(i.indkey, i.indclass, i.indcollation) AS k(attnum, cls, coll)
                    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                    JOIN pg_opclass o ON o.oid = k.cls),
                   -- UNIQUE NULLS NOT DISTINCT (PostgreSQL 15; read so that older servers answer false)
                   coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false)))
                 -- c.oid IS NOT NULL: a one-time filter, so that an unknown name scans no pg_index at all
                 FROM pg_index i WHERE c.oid IS NOT NULL AND i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                   AND i.indpred IS NULL AND i.indexprs IS NULL), '[]'),
       -- ON CONFLICT refuses tables with a deferrable unique or exclusion constraint, or with rules: such a table
       -- must not take plain inserts that land until the first duplicate (kapow.postgres.writer)
       coalesce(NOT c.relhasrules AND NOT EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conrelid = c.oid
                                                  AND x.contype IN ('p', 'u', 'x') AND x.condeferrable), false),
       coalesce((SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                                                  a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '',
                                                  a.attgenerated <> '' OR a.attidentity = 'a',
                                                  -- COPY takes it as json_populate_recordset does: its input
                                                  -- function, or a domain (one level) over such a type
                                                  (SELECT coalesce(CASE WHEN t.typtype = 'd'
                                                          THEN b.typtype NOT IN ('d', 'c', 'p')
                                                               AND b.typcategory NOT IN ('A', 'C', 'P', 'X')
                                                               AND b.oid NOT IN (114, 3802)
                                                          ELSE t.typtype NOT IN ('c', 'p')
                                                               AND t.typcategory NOT IN ('A', 'C', 'P', 'X')
                                                               AND t.oid NOT IN (114, 3802) END, false)
                                                   FROM pg_type t LEFT JOIN pg_type b ON b.oid = t.typbasetype
                                                   WHERE t.oid = a.atttypid),
                                                  (SELECT t.typtype = 'd' FROM pg_type t WHERE t.oid = a.atttypid))
                                 ORDER BY a.attnum)
                 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
       coalesce(c.relrowsecurity, false),
       -- an exclusion constraint (ON CONFLICT DO NOTHING without a target swallows its conflicts too) or a deferrable
       -- unique key (refused as an arbiter): inserts into such a table name their key (kapow.postgres.statements);
       -- then a second unique index (expression and partial ones too), whose conflicts a target-less ON CONFLICT
       -- swallows as well: a new key's row that met another row on a second key was dropped, unreported
       coalesce(EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conrelid = c.oid
                        AND (x.contype = 'x' OR (x.contype IN ('p', 'u') AND x.condeferrable))), false),
       (SELECT count(*) > 1 FROM pg_index i WHERE c.oid IS NOT NULL AND i.indrelid = c.oid AND i.indisunique)
FROM wanted w
LEFT JOIN pg_namespace n ON n.nspname = w.nspname
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.relname
"""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql_type: str  # as format_type() spells it, e.g. "numeric(12,2)", for messages and type-driven decoding
    not_null: bool
    has_default: bool
    generated: bool  # cannot be written (GENERATED ALWAYS)
    copy_safe: bool = False  # COPY reads its text as json_populate_recordset does (no json, array or composite)
    domain: bool = False  # its type is a domain (whose constraints json_populate_recordset checks even when absent)


_T = TypeVar("_T")
TABLE_KINDS = ("r", "p")  # an ordinary table, a partitioned one: what KaPoW writes
_KIND_NAMES = {"v": "a view", "m": "a materialized view", "f": "a foreign table", "S": "a sequence",
               "c": "a composite type", "i": "an index", "I": "an index", "t": "a TOAST table"}


def not_a_table(table: Table) -> str | None:
    """Why ``table`` cannot be written (it is a view, say), or None when it is a table."""
    if table.relkind in TABLE_KINDS:
        return None
    kind = _KIND_NAMES.get(table.relkind, f"a relation of kind {table.relkind!r}")
    return f"{table.schema}.{table.name} is {kind}, not a table: write to a plain table"
_MISSING = object()


def rough_bytes(obj: object, depth: int = 0) -> int:
    """What ``obj`` holds, roughly: strings at their length (four bytes a character when not ASCII), containers
    with their items, three levels deep; anything else ~1 kB (a decoder, a plan). For the catalog's bound, which
    must count what clients' column names make the caches hold (a review: 64 verdicts keyed by rows of 20,000
    names held 83 MB counted as 20 kB)."""
    if isinstance(obj, str):
        return 49 + (len(obj) if obj.isascii() else 4 * len(obj))
    if isinstance(obj, bytes):
        return 33 + len(obj)
    if obj is None or isinstance(obj, int | float | bool):
        return 16
    if isinstance(obj, tuple | list | frozenset | set) and depth < 3:
        return 56 + 8 * len(obj) + sum(rough_bytes(item, depth + 1) for item in obj)
    return 1024


@dataclass(slots=True)
class Table:
    """One destination table as the catalog saw it, with small caches of what is derived from it.

    The caches (verdicts per keyset, statements per shape) live and die with the entry, so the catalog's bound
    bounds them too; they are filled by the one lane worker writing the table at a time.
    """

    schema: str
    name: str
    columns: dict[str, Column]
    primary_key: tuple[str, ...] | None
    unique_keys: tuple[tuple[str, ...], ...]  # immediate (non-deferrable), non-partial: usable as arbiters
    deferrable_only: bool  # it has unique keys, but only deferrable ones (ON CONFLICT cannot use them)
    can_insert: bool
    can_update: bool
    can_delete: bool
    loaded_at: float = field(default_factory=time.monotonic)
    verdicts: dict[Any, Any] = field(default_factory=dict)  # kapow.postgres.validate's cache
    statements: dict[Any, Any] = field(default_factory=dict)  # kapow.postgres.statements' cache
    change_decoder: Any = None  # kapow.formats.debezium.ChangeDecoder for this table's columns, made on first use
    plain_from: float = 0.0  # monotonic time from which its inserts are tried without ON CONFLICT again
    plain_inserts: bool = True  # ON CONFLICT works on it: plain inserts may be tried first (no deferrable key)
    folding_keys: frozenset[tuple[str, ...]] = frozenset()  # keys PostgreSQL may fold on (DISTINCT ON = the index)
    row_security: bool = False  # COPY FROM refuses a table with row-level security
    null_keys: frozenset[tuple[str, ...]] = frozenset()  # UNIQUE NULLS NOT DISTINCT: a null is a key value there
    copy_from: float = 0.0  # monotonic time from which its inserts may be COPYed again (kapow.postgres.writer)
    derived_bytes: int = 0  # what the two caches hold, as rough_bytes counts their keys and values
    relkind: str = "r"  # pg_class.relkind: a view ("v") and other relations that are no table are refused by name
    # an exclusion constraint or a deferrable unique key: an insert's ON CONFLICT names one of unique_keys (without
    # a target it swallowed exclusion conflicts as duplicates, and was refused outright beside a deferrable key)
    targeted: bool = False
    # more than one unique index (expression and partial ones too): an insert's ON CONFLICT names a key that cannot
    # hold a null when it gives one (without a target, a new key's row that met another row on a second key was
    # taken for a duplicate: dropped, unreported; a hostile run)
    several_keys: bool = False

    MAX_DERIVED = 64  # entries per cache: a table sees a few keysets, not thousands

    @property
    def has_unique_key(self) -> bool:
        return bool(self.unique_keys)

    @property
    def required(self) -> frozenset[str]:
        """NOT NULL columns without a default: every inserted row must give these."""
        return frozenset(c.name for c in self.columns.values() if c.not_null and not c.has_default)

    @property
    def qualified(self) -> sql.Identifier:
        """``"schema"."table"``, quoted by psycopg: names reach SQL only this way."""
        return sql.Identifier(self.schema, self.name)

    def derived(self, key: tuple[Any, ...], build: Callable[[], _T]) -> _T:
        """What :mod:`kapow.postgres.statements` derives from this table under ``key`` (a statement's text, a key
        decoder): built on first use and kept while the cache has room (:attr:`MAX_DERIVED`)."""
        found = self.statements.get(key, _MISSING)
        if found is _MISSING:
            found = build()
            if len(self.statements) < self.MAX_DERIVED:
                self.statements[key] = found
                self.derived_bytes += rough_bytes(key) + rough_bytes(found)
        return cast(_T, found)

    def size(self) -> int:
        """Rough bytes this entry holds, for the catalog's bound."""
        return 512 + 200 * len(self.columns) + 100 * (len(self.verdicts) + len(self.statements)) + self.derived_bytes


def load_tables(conn: psycopg.Connection[Any], names: list[tuple[str, str]]) -> dict[tuple[str, str], Table | None]:
    """Read the shape of many tables in one query; ``None`` for each that does not exist (or is not a table)."""
    out: dict[tuple[str, str], Table | None] = {}
    if not names:
        return out
    with conn.cursor() as cur:
        cur.execute(_CATALOG_SQL, ([s for s, _ in names], [t for _, t in names]))
        rows = cur.fetchall()
    if not conn.autocommit:
        conn.rollback()  # leave the connection idle: the catalog read needs no transaction of its own
    for (schema, name, exists, relkind, can_insert, can_update, can_delete, keys, plain_ok, cols, rls, named,
         several) in rows:
        if not exists:
            out[(schema, name)] = None
            continue
        if relkind not in TABLE_KINDS:  # a view, a sequence...: known, and refused as such (unsupported_table)
            out[(schema, name)] = Table(schema, name, {}, None, (), False, False, False, False, relkind=relkind)
            continue
        columns = {c[0]: Column(c[0], c[1], c[2], c[3], c[4], bool(c[5]), bool(c[6])) for c in cols}
        primary = next((tuple(k[2]) for k in keys if k[0] and k[1]), None)
        unique = tuple(tuple(k[2]) for k in keys if k[1])
        # a column set PostgreSQL may fold on: every immediate unique index over it compares as the columns do
        folding = frozenset(key for key in unique if all(k[3] for k in keys if k[1] and tuple(k[2]) == key))
        # a null is a value there: every immediate unique index over the columns says so
        null_keys = frozenset(key for key in unique if all(k[4] for k in keys if k[1] and tuple(k[2]) == key))
        out[(schema, name)] = Table(schema, name, columns, primary, unique, bool(keys) and not unique,
                                    can_insert, can_update, can_delete, plain_inserts=bool(plain_ok),
                                    folding_keys=folding, row_security=bool(rls), null_keys=null_keys,
                                    targeted=bool(named), several_keys=bool(several))
    return out


class Catalog:
    """Thread-safe, byte-bounded LRU cache of :class:`Table` entries, keyed by :class:`TableKey`."""

    def __init__(self, *, ttl: float = 60.0, missing_ttl: float = 5.0, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._ttl = ttl
        self._missing_ttl = missing_ttl
        self._max_bytes = max_bytes
        self._entries: OrderedDict[TableKey, tuple[Table | None, float, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: TableKey) -> tuple[bool, Table | None]:
        """(cached and fresh?, table). A cached ``None`` means the table is known not to exist."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False, None
            table, at, _size = entry
            if time.monotonic() - at > (self._ttl if table is not None else self._missing_ttl):
                return False, None
            self._entries.move_to_end(key)
            return True, table

    def lookup(self, key: TableKey) -> tuple[bool, Table | None, float]:
        """:meth:`get` and :meth:`age` in one call, under one lock: (cached and fresh?, table, seconds since it was
        loaded). A unit with thousands of tables asked both for each, and its workers queued on this lock."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False, None, float("inf")
            table, at, _size = entry
            age = time.monotonic() - at
            if age > (self._ttl if table is not None else self._missing_ttl):
                return False, None, age
            self._entries.move_to_end(key)
            return True, table, age

    def age(self, key: TableKey) -> float:
        """Seconds since the entry was loaded (infinite when there is none)."""
        with self._lock:
            entry = self._entries.get(key)
        return time.monotonic() - entry[1] if entry is not None else float("inf")

    def put(self, key: TableKey, table: Table | None) -> None:
        size = (table.size() if table is not None else 200) + sys.getsizeof(key)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._entries[key] = (table, time.monotonic(), size)
            self._bytes += size
            while self._bytes > self._max_bytes and len(self._entries) > 1:
                _, (_, _, gone) = self._entries.popitem(last=False)
                self._bytes -= gone

    def refresh_size(self, key: TableKey) -> None:
        """Re-measure an entry whose derived caches grew, so that the bound stays true."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] is None:
                return
            size = entry[0].size() + sys.getsizeof(key)
            self._bytes += size - entry[2]
            self._entries[key] = (entry[0], entry[1], size)
            while self._bytes > self._max_bytes and len(self._entries) > 1:  # the oldest others make room
                oldest = next(iter(self._entries))
                if oldest == key:
                    self._entries.move_to_end(key)
                    continue
                _, (_, _, gone) = self._entries.popitem(last=False)
                self._bytes -= gone

    def invalidate(self, key: TableKey) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
