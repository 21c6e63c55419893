"""``make cdc-demo``: replicate a PostgreSQL table live, through Debezium's source connector, Kafka and KaPoW.

It creates a source database ``kapow_cdc_source`` with an ``orders`` table (10,000 rows), starts Debezium's
PostgreSQL connector in a Kafka Connect worker (``scripts/connect.sh``), starts ``kapow run`` with a
``[[routes]]`` entry that lands the change topic in ``kapow_cdc_target``, then changes the source (inserts,
updates, deletes) and prints, every second, both tables' row counts and whether their contents are equal
(a checksum of every row on each side). Ctrl+C stops the changes, waits for the target to catch up, prints the
verdict and cleans up (the writer, the connector, its replication slot, both databases).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
SOURCE, TARGET, PREFIX = "kapow_cdc_source", "kapow_cdc_target", "kapowcdc"
TOPIC = f"{PREFIX}.public.orders"
HOST = os.environ.get("KAPOW_PG_HOST", "127.0.0.1")
PORT = os.environ.get("KAPOW_PG_PORT", "5432")
BOOTSTRAP = os.environ.get("KAPOW_BOOTSTRAP", f"127.0.0.1:{os.environ.get('KAPOW_KAFKA_PORT', '9092')}")
STATE = ROOT / ".services" / "connect" / "cdc-demo"
DDL = """CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2) NOT NULL,
  status text NOT NULL, items jsonb, placed_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)"""
CHECKSUM = "SELECT count(*), coalesce(sum(hashtext(o::text)), 0) FROM orders o"


def dsn(db: str) -> str:
    return f"host={HOST} port={PORT} user=postgres dbname={db}"


def say(text: str) -> None:
    print(f"[cdc-demo] {text}", flush=True)


def recreate(db: str) -> None:
    with psycopg.connect(dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'.encode())
        conn.execute(f'CREATE DATABASE "{db}"'.encode())
    with psycopg.connect(dsn(db), autocommit=True) as conn:
        conn.execute(DDL.encode())


def connect_sh(*args: str) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "connect.sh"), *args, "--state", str(STATE)], check=True)


def checksum(db: str) -> tuple[int, int]:
    with psycopg.connect(dsn(db)) as conn:
        row = conn.execute(CHECKSUM).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def change(conn: psycopg.Connection[object], rng: random.Random, next_id: list[int]) -> None:
    what = rng.random()
    if what < 0.5:
        next_id[0] += 1
        conn.execute("INSERT INTO orders VALUES (%s, %s, %s, 'new', %s, now(), now())",
                     (next_id[0], f"c{rng.randrange(500)}", rng.randrange(1, 100_000) / 100,
                      f'{{"sku": "A{rng.randrange(99)}", "qty": {rng.randrange(1, 9)}}}'))
    elif what < 0.85:
        conn.execute("UPDATE orders SET status = %s, amount = amount + 1, updated_at = now() WHERE id = %s",
                     (rng.choice(["paid", "shipped", "returned"]), rng.randrange(1, next_id[0])))
    else:
        conn.execute("DELETE FROM orders WHERE id = %s", (rng.randrange(1, next_id[0]),))


def main() -> int:
    say(f"source database {SOURCE}: orders with 10,000 rows")
    recreate(SOURCE)
    recreate(TARGET)
    with psycopg.connect(dsn(SOURCE), autocommit=True) as conn:
        conn.execute("INSERT INTO orders SELECT i, 'c' || (i % 500), (i % 10000) / 100.0, 'new',"
                     " jsonb_build_object('sku', 'A' || (i % 99), 'qty', 1 + i % 8), now(), now()"
                     " FROM generate_series(1, 10000) i")
    say("Debezium's PostgreSQL connector (Kafka Connect standalone; the first start resolves its jars)")
    connect_sh("start", "--database", SOURCE, "--prefix", PREFIX, "--tables", "public.orders",
               "--bootstrap", BOOTSTRAP, "--pg-host", HOST, "--pg-port", PORT)
    config = Path(tempfile.mkdtemp(prefix="kapow-cdc-demo-")) / "replicate.toml"
    config.write_text(f"""[kafka]
bootstrap_servers = "{BOOTSTRAP}"
group_id = "kapow-cdc-demo"
user_errors_topic = "kapow.cdc-demo.errors.user"
system_errors_topic = "kapow.cdc-demo.errors.system"

[[destinations]]
vanity = "replica"
host = "{HOST}"
port = {PORT}
databases = ["{TARGET}"]
modes = ["insert", "upsert", "delete"]

[[routes]]
topic = "{TOPIC}"
vanity = "replica"
database = "{TARGET}"
table = "orders"
format = "debezium"

[http]
enabled = false

[log]
level = "WARNING"
format = "text"
""")
    say(f"kapow run -c {config}  (the route lands {TOPIC} in {TARGET}.public.orders)")
    writer = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(config)], start_new_session=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    rng = random.Random()
    next_id = [10_000]
    try:
        with psycopg.connect(dsn(SOURCE), autocommit=True) as conn:
            say("changing the source (inserts, updates, deletes); Ctrl+C to stop and compare")
            last = 0.0
            while not stop:
                for _ in range(20):
                    change(conn, rng, next_id)
                time.sleep(0.1)
                if time.monotonic() - last >= 1:
                    last = time.monotonic()
                    (sn, sh), (tn, th) = checksum(SOURCE), checksum(TARGET)
                    print(f"\rsource {sn:>6} rows   target {tn:>6} rows   {'EQUAL' if sh == th else 'catching up'}  ",
                          end="", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        print()
        deadline = time.monotonic() + 60
        while checksum(SOURCE) != checksum(TARGET) and time.monotonic() < deadline:
            time.sleep(0.5)
        equal = checksum(SOURCE) == checksum(TARGET)
        say(f"source and target are {'EQUAL' if equal else 'NOT equal'}: {checksum(SOURCE)[0]} rows each"
            if equal else "source and target are NOT equal after 60 s")
        os.killpg(writer.pid, signal.SIGTERM)
        writer.wait(30)
        connect_sh("drop")
        with psycopg.connect(dsn("postgres"), autocommit=True) as conn:
            for db in (SOURCE, TARGET):
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'.encode())
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
