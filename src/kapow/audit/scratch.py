"""The audit's working tables, and the SQL that gives each record its one fate.

Everything per record lives in temporary tables of one PostgreSQL session (the *scratch* database: the first
configured destination database that answers), filled by ``COPY`` as Kafka is read; Python keeps only counters
per partition. So the audit's memory does not grow with the topic, and the joins that sort a million records
run in C, in a few seconds.

The tables, in the order they are filled:

``audit_err``   one row per error record: the source record it names, the destination ('' when the packet failed
                as a whole) and its fate as a priority (4 user error, 3 republished: a reschedule or redrive
                copied it back to its topic, 2 parked, 1 purged);
``audit_item``  one row per (packet, destination) of the source topics (one row with destination '' for a packet
                the writer could not read), with the record's origin (``kapow-origin``, else itself), whether it
                is at or past the group's committed offset (pending) and the JSON holding its key;
``audit_op``    the two joined: each item's strongest error evidence (``prio``);
``audit_res``   the destination databases' verdicts on the rows of items that need one (:mod:`.checks`);
``audit_done``  the fate of each item, a copy's fate passed back to the record it was republished from.

Fates (smallint), worst last; a record takes the worst fate of its destinations (see :data:`FATES`).
"""

from __future__ import annotations

from typing import Any

import psycopg

LANDED, USER_ERRORS, PURGED, PARKED, PENDING, MISSING = range(6)
FATES = ("landed", "user_errors", "purged", "parked", "pending", "missing")
# prio of the strongest error record naming an item
P_USER, P_REPUBLISHED, P_PARKED, P_PURGED = 4, 3, 2, 1

SESSION = (
    "SET temp_buffers = '256MB'",  # before the first temporary table: keeps a million rows in memory
    "SET work_mem = '256MB'",  # one hash join / sort of a million rows each
    "SET statement_timeout = 0",
)

DDL = (
    "CREATE TEMP TABLE audit_err (t int2, p int4, o int8, dest text, prio int2)",
    "CREATE TEMP TABLE audit_item (seq int8, t int2, p int4, o int8, ts int8, pend bool, ot int2, op int4, oo int8,"
    " dest text, db int4, sch text, tbl text, kcols text, mode int2, keydoc text)",
)

JOIN_EVIDENCE = (
    "CREATE TEMP TABLE audit_erragg AS SELECT t, p, o, dest, max(prio) AS prio FROM audit_err GROUP BY 1, 2, 3, 4",
    "CREATE TEMP TABLE audit_errany AS SELECT t, p, o, max(prio) AS prio FROM audit_err GROUP BY 1, 2, 3",
    "ANALYZE audit_erragg",
    "ANALYZE audit_errany",
    "ANALYZE audit_item",
    # A packet the writer could not read (dest '') is accounted for by any error record naming it; a destination
    # by an error record naming it or naming the packet as a whole (dest NULL).
    """CREATE TEMP TABLE audit_op AS
       SELECT i.seq, i.t, i.p, i.o, i.ts, i.pend, i.ot, i.op, i.oo, i.dest, i.db, i.sch, i.tbl, i.kcols, i.mode,
              CASE WHEN i.dest = '' THEN a.prio ELSE greatest(e1.prio, e2.prio) END AS prio
       FROM audit_item i
       LEFT JOIN audit_errany a ON i.dest = '' AND a.t = i.t AND a.p = i.p AND a.o = i.o
       LEFT JOIN audit_erragg e1 ON e1.t = i.t AND e1.p = i.p AND e1.o = i.o AND e1.dest = i.dest
       LEFT JOIN audit_erragg e2 ON e2.t = i.t AND e2.p = i.p AND e2.o = i.o AND e2.dest IS NULL""",
    "ANALYZE audit_op",
    # The tables whose rows must be looked at: an item with no error record past the committed offset (it should
    # have landed), or republished (its copy may be beyond the audit's end: then the row decides).
    """CREATE TEMP TABLE audit_grp AS
       SELECT row_number() OVER (ORDER BY db, sch, tbl, kcols)::int4 AS grp, db, sch, tbl, kcols
       FROM (SELECT DISTINCT db, sch, tbl, kcols FROM audit_op
             WHERE db >= 0 AND dest <> '' AND (prio = 3 OR (prio IS NULL AND NOT pend))) s""",
    "CREATE TEMP TABLE audit_res (seq int8, st text)",
)

# eff: 1 the writer applied it (no error record, committed), 0 republished (its copy applied it), 2 pending
# (it may or may not have been applied yet)
CHECK_ROWS = """
    SELECT o.seq, g.grp, i.keydoc, o.mode, o.ts, o.t, o.p, o.o,
           (CASE WHEN o.prio = 3 THEN 0 WHEN o.pend THEN 2 ELSE 1 END)::int2
    FROM audit_op o
    JOIN audit_grp g ON g.db = o.db AND g.sch = o.sch AND g.tbl = o.tbl AND g.kcols = o.kcols
    JOIN audit_item i ON i.seq = o.seq
    WHERE o.db = {db} AND (o.prio IS NULL OR o.prio = 3)
"""

# Best fate first for the copies of one record: landed, pending, parked, purged, user error, missing. The mapping
# is its own inverse, so the same array turns a fate into a rank and back.
_RANK = "(ARRAY[0, 4, 3, 2, 1, 5]::int2[])"

RESOLVE = (
    "ANALYZE audit_res",
    f"""CREATE TEMP TABLE audit_fin AS
       SELECT o.t, o.p, o.o, o.ot, o.op, o.oo, o.dest, o.db, r.st,
              (CASE WHEN o.prio = {P_USER} THEN {USER_ERRORS} WHEN o.prio = {P_PARKED} THEN {PARKED}
                    WHEN o.prio = {P_PURGED} THEN {PURGED} WHEN o.prio = {P_REPUBLISHED} THEN NULL
                    WHEN o.pend THEN {PENDING}
                    WHEN r.st IN ('ok', 'u') THEN {LANDED} WHEN r.st = 'p' THEN {PENDING} ELSE {MISSING} END)::int2
              AS fate
       FROM audit_op o LEFT JOIN audit_res r ON r.seq = o.seq""",  # noqa: S608 - module constants only
    f"""CREATE TEMP TABLE audit_fam AS
       SELECT ot, op, oo, dest, min({_RANK}[fate + 1]) AS best
       FROM audit_fin WHERE fate IS NOT NULL GROUP BY 1, 2, 3, 4""",  # noqa: S608 - module constants only
    # A republished item takes the best fate of its family (the original and every copy, same destination); with
    # no copy in the audited range, the row decides: as its mode implies -> landed, else its copy is pending.
    f"""CREATE TEMP TABLE audit_done AS
       SELECT f.t, f.p, f.o, f.dest, f.db, f.st,
              coalesce(f.fate, {_RANK}[m.best + 1],
                       CASE WHEN f.st IN ('ok', 'u') THEN {LANDED} ELSE {PENDING} END)::int2 AS fate
       FROM audit_fin f
       LEFT JOIN audit_fam m ON f.fate IS NULL AND m.ot = f.ot AND m.op = f.op AND m.oo = f.oo AND m.dest = f.dest""",  # noqa: S608
)

COUNTS = """
    SELECT t, p, fate, count(*), count(*) FILTER (WHERE unverified)
    FROM (SELECT t, p, o, max(fate) AS fate, bool_or(st = 'u') AS unverified FROM audit_done GROUP BY t, p, o) r
    GROUP BY t, p, fate
"""

MISSING_EXAMPLES = f"""
    SELECT t, p, o, string_agg(
        CASE WHEN dest = '' THEN 'unreadable packet with no error record'
             WHEN db < 0 THEN dest || ': unconfigured destination with no error record'
             WHEN st = 'm' THEN dest || ': row not in the state its mode implies'
             ELSE dest || ': no verdict' END, '; ' ORDER BY dest)
    FROM audit_done WHERE fate = {MISSING}
    GROUP BY t, p, o ORDER BY t, p, o LIMIT %s
"""  # noqa: S608 - module constants only


def prepare(conn: psycopg.Connection[Any]) -> None:
    """Session settings and the tables Kafka is copied into."""
    for statement in (*SESSION, *DDL):
        conn.execute(statement)


def join_evidence(conn: psycopg.Connection[Any]) -> list[tuple[int, int, str, str, str]]:
    """Join items with error records; return the tables to check: (grp, db, schema, table, key columns)."""
    for statement in JOIN_EVIDENCE:
        conn.execute(statement)
    return [(int(g), int(d), str(s), str(t), str(k))
            for g, d, s, t, k in conn.execute("SELECT grp, db, sch, tbl, kcols FROM audit_grp ORDER BY grp")]


def resolve(conn: psycopg.Connection[Any], examples: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Fates from evidence and verdicts: (counts per partition and fate, the first ``examples`` missing records)."""
    for statement in RESOLVE:
        conn.execute(statement)
    counts = conn.execute(COUNTS).fetchall()
    missing = conn.execute(MISSING_EXAMPLES.encode(), (examples,)).fetchall()
    return counts, missing


def needs_rows(conn: psycopg.Connection[Any], db: int) -> bool:
    """Whether database ``db`` holds rows the audit cannot do without: records the writer applied there."""
    found = conn.execute(b"SELECT EXISTS (SELECT 1 FROM audit_op WHERE db = %s AND dest <> '' AND prio IS NULL"
                         b" AND NOT pend)", (db,)).fetchone()
    return bool(found and found[0])
