"""Is each row where its packets say it should be? One join per destination table, in its own database.

The items that need a look (:data:`kapow.audit.scratch.CHECK_ROWS`) are streamed from the scratch session into
a temporary table of the destination database (``COPY`` to ``COPY``, bytes passed through untouched; nothing to
do when the scratch database is that database), and each table is checked with one statement per unique key
(nearly always one):

* the key values are cut out of the record's ``data`` with the table's own types (``json_populate_record`` of a
  JSON object holding the key columns only), exactly as the writer casts them;
* the key is the destination's ``key`` when the packet names one, else the primary key, else the table's only
  (or first, by name) unique constraint;
* the *last* operation applied to each key, in topic order (record timestamp, then topic, partition, offset,
  then the destination's place in its packet: the order the writer applies a packet's destinations in),
  decides what the table must hold: the row after an insert or upsert, no row after a delete;
* a table with several unique keys: under each key, the last operation on a value may be another key's insert
  or upsert that gives it (their data is the row they put in place; a delete's data is its own key only). A
  delete by ``email`` and then an upsert by ``id`` of the same row leave it there, rightly. Another key's
  upsert is trusted (it puts its row in place); another key's insert is not (it may have done nothing, its row
  taken by its own key): an item whose key's last operation is one is ``u``, unverified;
* an insert or upsert is also judged under the other keys its data gives, where it can only be confirmed: it is
  the last operation on that value and the row there holds the other keys' values it gives (its ``id``: not
  another row's), or a later delete by that key took its row (an insert by ``id`` of a row then deleted by
  ``email``, whose ``id`` the delete does not give). It is ``ok`` when its own key or one of those says so;
* a record whose key the table holds as it must is ``ok``; one whose key was changed by a later record still
  pending (past the committed offset) is ``p``; one whose key cannot be known (no unique key on the table, or a
  key column the packet does not give) is ``u`` (unverified: counted as landed, and reported); else ``m``.

A row deleted behind KaPoW's back is ``m``: its key's last operation was an insert, and the row is not there.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from kapow.audit.asks import GUARDED, Mode
from kapow.audit.scratch import CHECK_ROWS

log = logging.getLogger(__name__)

_CHK_DDL = ("CREATE TEMP TABLE IF NOT EXISTS audit_chk (seq int8, grp int4, keydoc text, mode int2, ts int8,"
            " t int2, p int4, o int8, eff int2)")
_RES_DDL = "CREATE TEMP TABLE IF NOT EXISTS audit_res (seq int8, st text)"

_TABLE = """
    SELECT c.oid::int8, array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped),
           array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
               FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped),
           coalesce(bool_or(t.typtype = 'd') FILTER (WHERE a.attnum > 0 AND NOT a.attisdropped), false)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attribute a ON a.attrelid = c.oid
    LEFT JOIN pg_type t ON t.oid = a.atttypid
    WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
    GROUP BY c.oid
"""
_KEYS = """
    SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = %s::oid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
    GROUP BY i.indexrelid, i.indisprimary, ic.relname
    ORDER BY i.indisprimary DESC, ic.relname
"""


# A table's unique keys judged at most: each is one statement over the table's items (nearly every table has one).
MAX_KEYS = 8
_KV_DDL = "CREATE TEMP TABLE IF NOT EXISTS audit_kv (seq int8, st text)"


def table_keys(conn: psycopg.Connection[Any], schema: str, table: str
               ) -> tuple[list[str], list[list[str]], dict[str, str] | None] | None:
    """(its columns, its usable unique keys, the primary key first, and its columns' types when one of them is a
    domain, else None), or None when the table does not exist."""
    found = conn.execute(_TABLE.encode(), (schema, table)).fetchone()
    if found is None:
        return None
    oid, columns, types, domains = found
    keys = conn.execute(_KEYS.encode(), (oid,)).fetchall()
    typed = dict(zip(columns or [], types or [], strict=True)) if domains else None
    return list(columns or []), [list(k) for _primary, k in keys], typed


def own_key(columns: list[str], keys: list[list[str]], override: str) -> list[str]:
    """The key a destination's writes go by: its ``key`` when the table has those columns, else the first key."""
    wanted = [c for c in override.split(",") if c] if override else []
    if wanted and all(c in columns for c in wanted):
        return wanted
    return keys[0] if keys else []


def _verdicts(table: sql.Composable, keys: list[str], groups: list[int], by_this_key: list[int],
              others: list[str] | None = None, types: dict[str, str] | None = None) -> sql.Composed:
    """The one statement that judges, under one key, every item of one table whose data gives that key (see the
    module docstring): ``groups`` are the table's groups, ``by_this_key`` those whose writes go by this key (their
    deletes count; a delete's data is its key only); ``others``: the columns of the table's other keys, which the
    row found by this key must hold as an item gives them for this key to confirm that item. ``types``: the
    columns' types, given for a table with a domain column (the key values are then cut out by ``json_to_record``
    with the key columns' own types: a whole row of the table's type held a NULL of every other domain column, and
    a NOT NULL domain made the whole audit fail, as it did the writer's statements)."""
    others = [c for c in others or [] if c not in keys]
    ks = [sql.Identifier(f"k{i}") for i in range(len(keys))]
    os_ = [sql.Identifier(f"x{i}") for i in range(len(others))]
    pairs = sql.SQL(", ").join(sql.SQL("{}, d -> {}").format(sql.Literal(k), sql.Literal(k)) for k in keys + others)
    picked = sql.SQL(", ").join(sql.SQL("r.{} AS {}").format(sql.Identifier(k), kn)
                                for k, kn in zip(keys + others, ks + os_, strict=True))
    mine = sql.SQL("").join(sql.SQL(" AND (o.{on} IS NULL OR x.{c} = o.{on})").format(c=sql.Identifier(c), on=on)
                            for c, on in zip(others, os_, strict=True))
    in_row = sql.SQL(" AND ").join(sql.SQL("x.{} = o.{}").format(sql.Identifier(k), kn)
                                   for k, kn in zip(keys, ks, strict=True))
    if types is None:
        populate = sql.SQL("json_populate_record(NULL::{table}, json_build_object({pairs})) r").format(
            table=table, pairs=pairs)
    else:
        typed = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c])) for c in keys + others)
        populate = sql.SQL("json_to_record(json_build_object({pairs})) AS r({typed})").format(pairs=pairs, typed=typed)
    klist = sql.SQL(", ").join(ks)
    null = sql.SQL(" OR ").join(sql.SQL("o.{} IS NULL").format(kn) for kn in ks)
    same = sql.SQL(" AND ").join(sql.SQL("s.{k} = o.{k}").format(k=kn) for kn in ks)
    in_table = sql.SQL(" AND ").join(sql.SQL("x.{} = k.{}").format(sql.Identifier(k), kn)
                                     for k, kn in zip(keys, ks, strict=True))
    return sql.SQL("""
        INSERT INTO audit_kv (seq, st)
        WITH ops AS (
            SELECT c.seq, c.mode % {guarded} AS mode, c.mode >= {guarded} AS guarded, c.eff,
                   c.grp = ANY({by_this_key}::int4[]) AS native, ARRAY[c.ts, c.t, c.p, c.o, c.seq]::int8[] AS at,
                   {picked}
            FROM audit_chk c
            CROSS JOIN LATERAL (SELECT c.keydoc::json AS d) j
            CROSS JOIN LATERAL {populate}
            WHERE c.grp = ANY({groups}::int4[])
              AND (c.mode % {guarded} <> {delete} OR c.grp = ANY({by_this_key}::int4[]))
        ),
        keyed AS (SELECT * FROM ops o WHERE NOT ({null})),
        last AS (SELECT DISTINCT ON ({klist}) {klist}, seq, mode, guarded, native, at FROM keyed WHERE eff = 1
                 ORDER BY {klist}, at DESC),
        pend AS (SELECT {klist}, max(at) AS at FROM keyed WHERE eff = 2 GROUP BY {klist}),
        dels AS (SELECT {klist}, max(at) AS at FROM keyed WHERE eff = 1 AND native AND mode = {delete}
                 GROUP BY {klist}),
        state AS (
            SELECT k.*, l.seq AS lseq, l.mode AS lmode, l.guarded AS lguarded, l.native AS lnative, l.at AS lat,
                   pd.at AS pat,
                   dl.at AS dat, EXISTS (SELECT 1 FROM {table} x WHERE {in_table}) AS have
            FROM (SELECT DISTINCT {klist} FROM keyed WHERE eff IN (0, 1)) k
            LEFT JOIN last l USING ({klist})
            LEFT JOIN pend pd USING ({klist})
            LEFT JOIN dels dl USING ({klist})
        ),
        judged AS (
            SELECT o.seq,
                   CASE WHEN NOT o.native THEN  -- another key's insert or upsert: it can only confirm
                            CASE WHEN s.lseq = o.seq AND EXISTS (SELECT 1 FROM {table} x WHERE {in_row}{mine})
                                     THEN 'ok'  -- the row this key finds is its row (its other keys' values)
                                 WHEN s.dat > o.at THEN 'ok'  -- a later delete by this key took its row
                            END
                        WHEN s.lmode IS NOT NULL AND NOT s.lnative AND (s.lmode <> {upsert} OR s.lguarded)
                             AND s.lseq <> o.seq
                            THEN CASE WHEN s.pat IS NOT NULL AND s.pat > s.lat THEN 'p' ELSE 'u' END
                        WHEN (coalesce(s.lmode, o.mode) <> {delete}) = s.have THEN 'ok'
                        WHEN s.pat IS NOT NULL AND (s.lat IS NULL OR s.pat > s.lat) THEN 'p'
                        WHEN coalesce(s.lguarded, o.guarded) THEN 'u'  -- a version guard may rightly skip it
                        ELSE 'm' END AS st
            FROM keyed o JOIN state s ON {same}
            WHERE o.eff IN (0, 1)
        )
        SELECT seq, st FROM judged WHERE st IS NOT NULL
    """).format(populate=populate, picked=picked, table=table, pairs=pairs, groups=sql.Literal(groups), null=null,
                klist=klist, in_table=in_table, delete=sql.Literal(int(Mode.DELETE)),
                upsert=sql.Literal(int(Mode.UPSERT)), guarded=sql.Literal(GUARDED), in_row=in_row, mine=mine,
                same=same, by_this_key=sql.Literal(by_this_key))


# An item judged under several keys takes the best verdict; one that gives none of its table's keys is unverified.
# Once per database, after every table: one pass over the items.
_BEST = """
    INSERT INTO audit_res (seq, st)
    SELECT c.seq, CASE WHEN bool_or(k.st = 'ok') THEN 'ok' WHEN bool_or(k.st = 'p') THEN 'p'
                       WHEN bool_or(k.st = 'm') THEN 'm' ELSE 'u' END
    FROM audit_chk c LEFT JOIN audit_kv k ON k.seq = c.seq
    WHERE c.eff IN (0, 1)
    GROUP BY c.seq
"""

_SAFE_POPULATE = """
    CREATE OR REPLACE FUNCTION pg_temp.audit_populate(base anyelement, doc json) RETURNS anyelement
    LANGUAGE plpgsql AS $$
    BEGIN
        RETURN json_populate_record(base, doc);
    EXCEPTION WHEN data_exception OR invalid_text_representation THEN
        RETURN NULL;  -- a key value the column rejects: unknown key, judged 'u' (its record is a user error)
    END $$
"""


def check_table(conn: psycopg.Connection[Any], schema: str, table: str, groups: list[tuple[int, str]]) -> None:
    """Verdicts for the items of one table into ``audit_kv`` (none: unverified); ``groups``: (group, its ``key``
    override), one per key the table's destinations name.

    Each item is judged under every unique key its data gives, and counts as landed when one of them says so:
    a delete by ``email`` and then an upsert by ``id`` of the same row leave it there, which the ``id`` key alone
    cannot see (the delete gives no ``id``), and the ``email`` key can (the upsert's data gives it)."""
    ids = [g for g, _ in groups]
    found = table_keys(conn, schema, table)
    if found is None:
        conn.execute(b"INSERT INTO audit_kv SELECT seq, 'm' FROM audit_chk WHERE grp = ANY(%s::int4[])"
                     b" AND eff IN (0, 1)", (ids,))
        return
    columns, keys, types = found
    owns = [(g, own_key(columns, keys, override)) for g, override in groups]
    judged: list[list[str]] = []
    for key in [k for _g, k in owns] + keys:
        if key and key not in judged and len(judged) < MAX_KEYS:
            judged.append(key)
    qualified = sql.Identifier(schema, table)
    for key in judged:
        others = list(dict.fromkeys(c for k in judged if k != key for c in k))
        statement = _verdicts(qualified, key, ids, [g for g, k in owns if k == key], others, types)
        try:
            with conn.transaction():
                conn.execute(statement)
        except psycopg.errors.DataError:  # a bad key value (a pending record's): the slow, careful way
            log.info("audit: a key value of %s.%s does not cast; checking row by row", schema, table)
            conn.execute(_SAFE_POPULATE.encode())
            careful = statement.as_string(conn).replace("CROSS JOIN LATERAL json_populate_record(",
                                                        "CROSS JOIN LATERAL pg_temp.audit_populate(", 1)
            conn.execute(careful.encode())


def check_database(scratch: psycopg.Connection[Any], target: psycopg.Connection[Any] | None, db: int,
                   groups: list[tuple[int, str, str, str]]) -> None:
    """Check every table of destination database ``db``; ``target`` None: it is the scratch database itself."""
    rows = sql.SQL(CHECK_ROWS).format(db=sql.Literal(db))
    conn = scratch if target is None else target
    conn.execute(_CHK_DDL.encode())
    conn.execute(b"TRUNCATE audit_chk")
    if target is None:
        scratch.execute(sql.SQL("INSERT INTO audit_chk ") + rows)
    else:
        conn.execute(_RES_DDL.encode())
        conn.execute(b"TRUNCATE audit_res")
        _pipe(scratch, sql.SQL("COPY ({}) TO STDOUT").format(rows), target, sql.SQL("COPY audit_chk FROM STDIN"))
    conn.execute(b"ANALYZE audit_chk")
    conn.execute(_KV_DDL.encode())
    conn.execute(b"TRUNCATE audit_kv")
    tables: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for grp, schema, table, override in groups:
        tables.setdefault((schema, table), []).append((grp, override))
    for (schema, table), its_groups in tables.items():
        check_table(conn, schema, table, its_groups)
    conn.execute(_BEST.encode())
    if target is not None:
        _pipe(target, sql.SQL("COPY audit_res TO STDOUT"), scratch, sql.SQL("COPY audit_res FROM STDIN"))


def _pipe(src: psycopg.Connection[Any], out: sql.Composed | sql.SQL, dst: psycopg.Connection[Any],
          into: sql.Composed | sql.SQL) -> None:
    """``COPY ... TO STDOUT`` on one connection straight into ``COPY ... FROM STDIN`` on another."""
    with src.cursor() as rc, dst.cursor() as wc, rc.copy(out) as reading, wc.copy(into) as writing:
        for block in reading:
            writing.write(block)
