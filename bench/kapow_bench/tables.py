"""Read and fill the run's tables from the harness's side: the final state, the database's own clock, pre-loads and
the COPY ceiling.

The state of T tables is read with one ``UNION ALL`` query per few hundred tables (rows, the sum of the keys and
of ``rev``, the first and last ``landed_at``), so a run over 10,000 tables is checked in seconds. For workloads
whose statements do not all insert (upserts, deletes, change events), the clock is ``bench_clock``: one stamp per
statement that touched a table (:mod:`kapow_bench.shapes`).

The COPY ceiling is plain ``COPY … FROM STDIN`` of rows already in COPY text form into the same tables, over
``connections`` connections at once, each one transaction: nothing that lands rows in these tables on this server
can beat it by much, so a writer's rate over it says how much of the database's capacity the pipeline leaves
unused. It runs in the same run as the writer, on the same tables (truncated first), so both see the same machine.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from kapow_bench.env import connect
from kapow_bench.shapes import Row, copy_line
from kapow_bench.workload import Expect, TableRef, Workload

UNION_CHUNK = 400


@dataclass(frozen=True)
class State:
    """What the tables hold after a run, and the database's clock of it (epoch seconds, None when nothing)."""

    got: Expect
    first: float | None
    last: float | None


def _by_database(tables: list[TableRef]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in tables:
        out.setdefault(t.database, []).append(t.name)
    return out


def read_state(work: Workload) -> State:
    """Rows, key and rev sums over every table; first and last stamp (``landed_at``, or ``bench_clock``)."""
    key = sql.Identifier(work.shape.key)
    rev = sql.SQL("coalesce(sum(rev), 0)") if work.spec.has_rev else sql.SQL("0")
    rows = keys = revs = 0
    firsts: list[float] = []
    lasts: list[float] = []
    for db, names in _by_database(work.tables).items():
        with connect(db) as conn:
            for i in range(0, len(names), UNION_CHUNK):
                parts = [sql.SQL("SELECT count(*) c, coalesce(sum({k}), 0) k, {r} r, min(landed_at) f, "
                                 "max(landed_at) l FROM {t}").format(k=key, r=rev, t=sql.Identifier(name))
                         for name in names[i:i + UNION_CHUNK]]
                row = conn.execute(sql.SQL(
                    "SELECT sum(c), sum(k), sum(r), extract(epoch FROM min(f))::float8, "
                    "extract(epoch FROM max(l))::float8 FROM ({}) s").format(
                    sql.SQL(" UNION ALL ").join(parts))).fetchone()
                assert row is not None
                rows, keys, revs = rows + int(row[0]), keys + int(row[1]), revs + int(row[2])
                if work.spec.stamps_rows:
                    firsts += [row[3]] if row[3] is not None else []
                    lasts += [row[4]] if row[4] is not None else []
            if not work.spec.stamps_rows:  # rows inserted before the run (pre-load) or updated: the statements
                clock = conn.execute("SELECT extract(epoch FROM min(at))::float8, extract(epoch FROM max(at))::float8"
                                     " FROM bench_clock").fetchone()
                assert clock is not None
                firsts += [clock[0]] if clock[0] is not None else []
                lasts += [clock[1]] if clock[1] is not None else []
    return State(Expect(rows, keys, revs), min(firsts, default=None), max(lasts, default=None))


def latencies_ms(work: Workload, *, max_key: int) -> list[float]:
    """Every row's ``landed_at - created_at`` in milliseconds, sorted, for the rows keyed up to ``max_key``."""
    out: list[float] = []
    for db, names in _by_database(work.tables).items():
        with connect(db) as conn:
            for i in range(0, len(names), UNION_CHUNK):
                parts = [sql.SQL("SELECT extract(epoch FROM landed_at - created_at) * 1000 FROM {} WHERE {} <= {}")
                         .format(sql.Identifier(n), sql.Identifier(work.shape.key), max_key)
                         for n in names[i:i + UNION_CHUNK]]
                out += [float(r[0]) for r in conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()]
    return sorted(out)


def truncate(work: Workload) -> None:
    """Empty every table (and the statement clock): fresh storage for the ceiling, as a new table would have."""
    for db, names in _by_database(work.tables).items():
        with connect(db) as conn:
            for i in range(0, len(names), UNION_CHUNK):
                conn.execute(sql.SQL("TRUNCATE {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, names[i:i + UNION_CHUNK]))))
            if not work.spec.stamps_rows:
                conn.execute("TRUNCATE bench_clock")


def reset_clock(work: Workload) -> None:
    """Forget the statement stamps of a pre-load: the clock must date the writer's statements only."""
    if not work.spec.stamps_rows:
        for db in _by_database(work.tables):
            with connect(db) as conn:
                conn.execute("TRUNCATE bench_clock")


def copy_rows(work: Workload, rows: dict[int, list[Row]], *, connections: int) -> float:
    """COPY ``rows`` (table index → rows) into their tables over ``connections`` connections per database;
    the seconds the COPYs took (the text is made and the connections opened before the clock starts)."""
    columns = work.shape.columns
    head = sql.SQL("COPY {} ({}) FROM STDIN")
    col_list = sql.SQL(", ").join(map(sql.Identifier, columns))
    per_db: dict[str, list[tuple[str, bytes]]] = {}
    for t, rs in rows.items():
        ref = work.tables[t]
        per_db.setdefault(ref.database, []).append((ref.name, b"".join(copy_line(r, columns) for r in rs)))
    jobs: list[tuple[Any, list[tuple[str, bytes]]]] = []
    for db, items in per_db.items():
        if len(items) == 1:  # one table: its rows in `connections` slices
            name, text = items[0]
            lines = text.splitlines(keepends=True)
            groups = [[(name, b"".join(lines[i::connections]))] for i in range(connections)]
        else:
            groups = [items[i::connections] for i in range(connections)]
        jobs += [(connect(db), g) for g in groups if g]
    errors: list[BaseException] = []

    def run(conn: Any, items: list[tuple[str, bytes]]) -> None:
        try:
            with conn.transaction(), conn.cursor() as cur:
                for name, text in items:
                    with cur.copy(head.format(sql.Identifier(name), col_list)) as cp:
                        for i in range(0, len(text), 1 << 20):
                            cp.write(text[i:i + (1 << 20)])
        except BaseException as exc:
            errors.append(exc)

    try:
        start = time.perf_counter()
        threads = [threading.Thread(target=run, args=job) for job in jobs]
        for th in threads[:connections]:
            th.start()
        for i, th in enumerate(threads):  # at most `connections` at once
            th.join()
            if i + connections < len(threads):
                threads[i + connections].start()
        seconds = time.perf_counter() - start
    finally:
        for conn, _g in jobs:
            conn.close()
    if errors:
        raise errors[0]
    return seconds


def sample_matches(work: Workload) -> bool:
    """A few landed rows equal, field by field, the packets that made them (the decimal as text, the timestamp to
    the microsecond): counting proves completeness, not that a value was converted right.

    Inserts: the first, middle and last packets' rows. Upserts and change events: the first rows of the first table,
    each compared with the packet that carried its ``rev`` (packet ``rev - 1``). Deletes and the 12-byte ids have
    nothing to compare beyond the key, which the state check covers.
    """
    import datetime as dt

    if work.shape.key != "event_id" or work.spec.mode == "delete":
        return True
    cols = sql.SQL("event_id, account, kind, amount::text, currency, created_at")
    checks: list[tuple[TableRef, Row]] = []
    if work.spec.stamps_rows:
        picks = sorted({0, work.n // 3, work.n // 2, (2 * work.n) // 3, work.n - 1})
        checks = [(work.tables[work.table_of[i]], work.rows[i]) for i in picks]
    else:
        table = work.tables[0]
        with connect(table.database) as conn:
            revs = conn.execute(sql.SQL("SELECT rev FROM {} ORDER BY event_id LIMIT 5").format(
                sql.Identifier(table.name))).fetchall()
        checks = [(table, work.rows[int(r[0]) - 1]) for r in revs]
    for table, want in checks:
        with connect(table.database) as conn:
            got = conn.execute(sql.SQL("SELECT {} FROM {} WHERE event_id = %s").format(
                cols, sql.Identifier(table.name)), (want["event_id"],)).fetchone()
        expected = (want["event_id"], want["account"], want["kind"], want["amount"], want["currency"],
                    dt.datetime.fromisoformat(str(want["created_at"]).replace("Z", "+00:00")))
        if got is None or tuple(got) != expected:
            return False
    return True
