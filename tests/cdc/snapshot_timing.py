"""How long Debezium takes here to start and to snapshot N rows of the every-type table into Kafka.

    .venv/bin/python -m tests.cdc.snapshot_timing --rows 100000

Prints one JSON line: ``start_s`` (connect.sh start until the connector and its task run), ``snapshot_s``
(Debezium's own snapshot, first step to "Snapshot completed") and ``in_kafka_s`` (start until all N records are
in the topic), with the rows per second. Everything it creates is removed at the end. It sizes the end-to-end
test that ``make test`` runs, so it is a tool, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from tests.cdc import source
from tests.cdc.connector import Connector
from tests.integration import kit


def fill(conn: psycopg.Connection[object], rows: int) -> None:
    """``rows`` rows: 1,000 distinct ones, copied with shifted ids (fast, and every column stays varied)."""
    seed = min(rows, 1000)
    with conn.cursor() as cur:
        for i in range(seed):
            source.insert(conn, "src", [source.bulk_row(i, months=False)])
        others = [c for c in source.COLUMNS if c != "id"]
        copies = -(-(rows - seed) // seed)
        if copies:
            cols = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in others)
            cur.execute(sql.SQL("INSERT INTO src (id, {names}) SELECT s.id + g * 1000, {cols} FROM src s, "
                                "generate_series(1, %s) g WHERE s.id + g * 1000 < %s").format(
                names=sql.SQL(", ").join(map(sql.Identifier, others)), cols=cols), (copies, rows))


NARROW = """
CREATE TABLE src (id bigint PRIMARY KEY, name text, amount numeric(12,2), created_at timestamptz, updated timestamp,
                  flag boolean, qty integer, payload jsonb, day date, ref uuid);
INSERT INTO src SELECT g, 'customer ' || g, g / 100.0, now() - g * interval '1 second', now()::timestamp, g % 2 = 0,
                       g % 1000, jsonb_build_object('src', 'web', 'n', g), current_date - g % 3650, gen_random_uuid()
FROM generate_series(1, %s) g;
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--narrow", action="store_true", help="a typical 10-column table instead of every type")
    parser.add_argument("--no-schemas", action="store_true", help="JSON converter without the schema envelope")
    args = parser.parse_args()
    db, prefix = kit.uid("kcdc_time"), kit.uid("kcdc_time")
    topic = f"{prefix}.public.src"
    kit.create_database(db)
    connector: Connector | None = None
    try:
        with psycopg.connect(kit.dsn(db), autocommit=True) as conn:
            if args.narrow:
                conn.execute(NARROW.replace("%s", str(int(args.rows))).encode())
            else:
                source.create_source(conn, "src")
                fill(conn, args.rows)
            n = conn.execute("SELECT count(*) FROM src").fetchone()[0]  # type: ignore[index]
        with tempfile.TemporaryDirectory() as state:
            connector = Connector(Path(state), database=db, prefix=prefix, tables="public.src",
                                  schemas=not args.no_schemas)
            t0 = time.monotonic()
            connector.start()
            started = time.monotonic() - t0
            snapshot = connector.wait_snapshot(args.timeout)
            kit.wait_for(lambda: sum(kit.end_offsets(topic).values()) >= n, args.timeout, f"{n} records", 0.5)
            in_kafka = time.monotonic() - t0
            size = sum(len(r.value or b"") for r in kit.read_all(topic, timeout=10)[:1000]) / 1000
            print(json.dumps({"table": "narrow" if args.narrow else "every type", "schemas": not args.no_schemas,
                              "rows": n, "start_s": round(started, 2), "snapshot_s": round(snapshot, 2),
                              "in_kafka_s": round(in_kafka, 2), "rows_per_s": round(n / (in_kafka - started)),
                              "event_bytes": round(size)}))
            connector.drop()
            connector = None
    finally:
        if connector is not None:
            connector.drop()
        kit.drop_database(db)
        kit.remove_topics([topic])
    return 0


if __name__ == "__main__":
    sys.exit(main())
