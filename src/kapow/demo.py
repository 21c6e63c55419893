"""``kapow demo``: land a sample stream in a demo table and show it happening.

It expects the services to be up (``make demo`` starts them first), creates the database ``kapow_demo`` with a
``payments`` table keyed by ``payment_id``, starts the writer with ``examples/kapow.toml``, publishes a stream
of packets (a few of them deliberately bad, and some foreign traffic without the header), and prints a live
count of landed rows until every packet is accounted for; then a few rows. Ctrl+C stops the writer cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from kapow.client import Publisher
from kapow.contract import make_packet
from kapow.errors import KapowError
from kapow.kafka.clients import ensure_topics

DEMO_DB = "kapow_demo"
TOPIC = "kapow.demo.events"
BOOTSTRAP = os.environ.get("KAPOW_BOOTSTRAP", "127.0.0.1:9092")
ADMIN_DSN = os.environ.get("KAPOW_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
TABLE_DDL = """
CREATE TABLE IF NOT EXISTS public.payments (
    payment_id bigint PRIMARY KEY,
    account    text NOT NULL,
    amount     numeric(12,2) NOT NULL,
    currency   text NOT NULL DEFAULT 'USD',
    paid_at    timestamptz NOT NULL,
    meta       jsonb,
    landed_at  timestamptz NOT NULL DEFAULT now()
)
"""


def _config_path() -> Path:
    for candidate in (Path.cwd() / "examples" / "kapow.toml", Path(__file__).parents[2] / "examples" / "kapow.toml"):
        if candidate.is_file():
            return candidate
    raise KapowError("examples/kapow.toml not found: run the demo from the project's root (make demo)")


def _prepare_database() -> None:
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DB,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DEMO_DB}"')
        with psycopg.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={DEMO_DB}"), autocommit=True) as conn:
            conn.execute(TABLE_DDL)
            conn.execute("TRUNCATE public.payments")
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        raise KapowError(f"PostgreSQL is not reachable ({reason}); run: make services") from None


def _count() -> int:
    with psycopg.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={DEMO_DB}")) as conn:
        row = conn.execute("SELECT count(*) FROM public.payments").fetchone()
        return int(row[0]) if row else 0


def run_demo(*, packets: int, rate: int) -> int:
    config = _config_path()
    _prepare_database()
    ensure_topics(BOOTSTRAP, {TOPIC: 6})
    dest = {"type": "postgres", "vanity": "warehouse", "database": DEMO_DB, "schema": "public", "table": "payments"}
    print(f"KaPoW demo: {packets} packets to topic {TOPIC} -> {DEMO_DB}.public.payments (config {config})")
    # Its own session: Ctrl+C reaches only the demo, which then stops the writer with one SIGTERM (a second
    # signal would make the writer exit at once instead of finishing cleanly).
    writer = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(config)], start_new_session=True,
                              stderr=open(Path(config).parent.parent / ".kapow-demo.log", "w"))  # noqa: SIM115
    bad = 0
    try:
        with Publisher(BOOTSTRAP, TOPIC) as pub:
            started = time.monotonic()
            for i in range(1, packets + 1):
                if i % 1000 == 500:  # a bad packet now and then: it lands on the user-errors topic, nothing stops
                    pub.send_raw(make_packet([dest], {"payment_id": i, "amount": "twelve"}))
                    bad += 1
                elif i % 1000 == 700:  # foreign traffic on the same topic: filtered, never an error
                    pub.send_raw(b'{"not": "for kapow"}', pipeline=False)
                else:
                    pub.send([dest], {"payment_id": i, "account": f"acct-{i % 97:03d}",
                                      "amount": f"{(i * 7919) % 100000 / 100:.2f}",
                                      "paid_at": "2026-11-24T10:00:00Z", "meta": {"src": "demo", "n": i}})
                if i % 200 == 0:
                    ahead = i / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                    if i % 2000 == 0:
                        print(f"\r  published {i:>7}   landed {_count():>7}", end="", flush=True)
        expected = packets - bad - packets // 1000 - (1 if packets % 1000 >= 700 else 0)
        deadline = time.monotonic() + 60
        landed = _count()
        while landed < expected and time.monotonic() < deadline and writer.poll() is None:
            print(f"\r  published {packets:>7}   landed {landed:>7}", end="", flush=True)
            time.sleep(0.3)
            landed = _count()
        print(f"\r  published {packets:>7}   landed {landed:>7}   (expected {expected}; {bad} bad packets went"
              " to kapow.errors.user)")
        with psycopg.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={DEMO_DB}")) as conn:
            print("\n  a few rows of kapow_demo.public.payments:\n")
            print(f"    {'payment_id':>10}  {'account':<9} {'amount':>8}  {'currency':<8} {'paid_at':<25} meta")
            for pid, account, amount, currency, paid_at, meta in conn.execute(
                    "SELECT payment_id, account, amount, currency, paid_at, meta::text FROM payments"
                    " ORDER BY payment_id LIMIT 5"):
                print(f"    {pid:>10}  {account:<9} {amount:>8}  {currency:<8} {paid_at.isoformat():<25} {meta}")
        print("\nThe writer keeps running (log: .kapow-demo.log). Console, metrics and DLQ API:"
              " http://127.0.0.1:8080/  (from examples/kapow.toml [http]).")
        print("Press Ctrl+C to stop it cleanly.")
        while writer.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping the writer (SIGTERM: finish in flight, commit, leave the group) ...")
    finally:
        if writer.poll() is None:
            writer.send_signal(signal.SIGTERM)
            try:
                writer.wait(15)
            except subprocess.TimeoutExpired:
                writer.kill()
        print(f"writer exited with {writer.returncode}")
    return 0 if landed >= expected else 1
