"""The peer alone: create a scratch database and table, land the historical rows, print the result as JSON, drop.

    python -m kapow_bench.peer -n 50000 -p 6 [--insert-mode insert] [--no-unnest] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kapow_bench.peer.connect import run_peer
from kapow_bench.peer.records import RecordEncoder, make_rows

DDL = """CREATE TABLE bench_events (event_id bigint PRIMARY KEY, account text NOT NULL, kind text NOT NULL,
  amount numeric(12,2) NOT NULL, currency text NOT NULL, created_at timestamptz NOT NULL, note text)"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kapow_bench.peer", description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="an admin database on the server (the scratch database is created beside it)")
    ap.add_argument("-n", "--rows", type=int, default=50_000)
    ap.add_argument("-p", "--partitions", type=int, default=6)
    ap.add_argument("-b", "--batch-size", type=int, default=5000)
    ap.add_argument("--insert-mode", choices=("upsert", "insert"), default="upsert")
    ap.add_argument("--no-unnest", action="store_true", help="disable dialect.postgres.unnest.insert.enabled")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "kapow-peer",
                    help="where the jars are cached and Connect runs")
    args = ap.parse_args(argv)
    database = f"kapow_peer_{uuid.uuid4().hex[:8]}"
    rows = make_rows(args.rows)
    encoder = RecordEncoder(("event_id", "account", "kind", "amount", "currency", "created_at", "note"))
    records = [encoder.encode(r) for r in rows]
    db_dsn = make_conninfo(args.dsn, dbname=database)
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(DDL)

            def landed() -> tuple[int, bool]:
                row = conn.execute("SELECT count(*) FROM bench_events").fetchone()
                got = int(row[0]) if row else 0
                return got, got >= len(rows)

            last = [0.0]

            def progress(done: int, total: int) -> None:
                if time.monotonic() - last[0] >= 5 or done >= total:
                    last[0] = time.monotonic()
                    print(f"peer: {done}/{total} rows landed", file=sys.stderr, flush=True)

            result = run_peer(bootstrap=args.bootstrap, pg_dsn=args.dsn, database=database, table="bench_events",
                              records=records, landed=landed, partitions=args.partitions,
                              batch_size=args.batch_size, work_dir=args.work_dir, insert_mode=args.insert_mode,
                              unnest=not args.no_unnest, progress=progress)
            result["landing_seconds"] = round(time.time() - result["jvm_started_at"], 3)
            result["landing_packets_per_s"] = round(len(rows) / result["landing_seconds"], 1)
        print(json.dumps(result, indent=2))
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    return 0
