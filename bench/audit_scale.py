"""Measure ``kapow audit`` and ``kapow dlq reschedule`` at scale: wall time and peak RSS (docs/BENCHMARKS.md).

    .venv/bin/python bench/audit_scale.py --packets 1000000

1. A fresh topic (6 partitions) and database; ``--packets`` packets of about 250 bytes, landed by ``kapow run``.
2. ``kapow audit --json`` over a tenth of the topic (``--from-offsets``), then over all of it, each under
   ``/usr/bin/time -v``: time and peak RSS, and the counts (every packet must be ``landed``, none ``missing``).
3. As many parked records written to the system-errors topic (the writer's headers), then ``kapow dlq reschedule``
   of a tenth of them (``--until``), then of the rest (``--all``), each timed the same way; the copies are counted.
4. One Markdown row per step on stdout; everything it created is removed (unless ``--keep``).

Needs the services (``make services``) and ~2 GB of disk for Kafka at a million packets.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from kapow.contract import CONTEXT_HEADER, CONTEXT_VALUE, make_packet
from kapow.deadletter.reader import open_reader
from kapow.kafka.clients import delete_topics, ensure_topics, make_producer

BOOTSTRAP = os.environ.get("KAPOW_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('KAPOW_KAFKA_PORT') or 9092}"
PG = os.environ.get("KAPOW_PG") or (f"host={os.environ.get('KAPOW_PG_HOST') or '127.0.0.1'} "
                                   f"port={os.environ.get('KAPOW_PG_PORT') or 5432} user=postgres")
DDL = """CREATE TABLE bench_events (event_id bigint PRIMARY KEY, account text NOT NULL, kind text NOT NULL,
         amount numeric(12,2) NOT NULL, currency text NOT NULL, created_at timestamptz NOT NULL, note text)"""
PARTITIONS = 6
T0 = 1_790_000_000_000


def produce(topic: str, values: Any, headers_of: Any) -> None:
    producer = make_producer(BOOTSTRAP, **{"linger.ms": 50, "batch.size": 1_000_000})
    for i, value in values:
        while True:
            try:
                producer.produce(topic, key=str(i).encode(), value=value, headers=headers_of(i),
                                 partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0


def packets(db: str, n: int) -> Any:
    dest = [{"type": "postgres", "vanity": "wh", "database": db, "schema": "public", "table": "bench_events"}]
    for i in range(n):
        yield i, make_packet(dest, {"event_id": i, "account": f"acct-{i % 5000:05d}", "kind": "payment",
                                    "amount": f"{i % 997}.{i % 100:02d}", "currency": "EUR",
                                    "created_at": "2026-11-24T10:00:00Z", "note": "n" * 60})


def parked(db: str, source: str, n: int) -> Any:
    dest = msgspec.json.encode({"type": "postgres", "vanity": "wh", "database": db, "schema": "public",
                                "table": "bench_events"})

    def headers(i: int) -> list[tuple[str, bytes]]:
        return [(CONTEXT_HEADER, CONTEXT_VALUE), ("kapow-error-class", b"system"),
                ("kapow-error-code", b"database_unavailable"), ("kapow-error-message", b"connection refused"),
                ("kapow-destination", dest), ("kapow-source-topic", source.encode()),
                ("kapow-source-partition", str(i % PARTITIONS).encode()), ("kapow-source-offset", str(i).encode()),
                ("kapow-source-timestamp", str(T0).encode()), ("kapow-attempt", b"1"),
                ("kapow-failed-at", str(T0 + i).encode())]

    return headers


def timed(args: list[str]) -> tuple[float, float, str, str]:
    """(seconds, peak RSS in MB, stdout, stderr) of a ``kapow`` command under /usr/bin/time -v."""
    started = time.monotonic()
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "kapow", *args], capture_output=True,
                          text=True, check=False)
    took = time.monotonic() - started
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    rss = int(found.group(1)) / 1024 if found else float("nan")
    if done.returncode not in (0,):
        raise SystemExit(f"kapow {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return took, rss, done.stdout, done.stderr


def count(topic: str) -> int:
    with open_reader(BOOTSTRAP) as reader:
        return sum(1 for _ in reader.read(topic, reader.watermarks(topic)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="leave the topics, database and config behind")
    ap.add_argument("--no-dlq", action="store_true", help="measure the audit only")
    args = ap.parse_args()
    n = args.packets
    base = f"bench_audit_{uuid.uuid4().hex[:8]}"
    topic, user, system, group, db = f"{base}.in", f"{base}.user", f"{base}.system", f"{base}.group", base
    tmp = Path(tempfile.mkdtemp(prefix="kapow-audit-bench-"))
    config = tmp / "kapow.toml"
    config.write_text(f"""[kafka]
bootstrap_servers = "{BOOTSTRAP}"
group_id = "{group}"
topics = ["{topic}"]
user_errors_topic = "{user}"
system_errors_topic = "{system}"

[[destinations]]
vanity = "wh"
databases = ["{db}"]
max_connections = 4

[http]
enabled = false
""")
    rows: list[str] = []
    with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"'.encode())
    try:
        with psycopg.connect(f"{PG} dbname={db}", autocommit=True) as conn:
            conn.execute(DDL.encode())
        ensure_topics(BOOTSTRAP, {topic: PARTITIONS, user: 3, system: PARTITIONS})
        started = time.monotonic()
        produce(topic, packets(db, n), lambda _i: [(CONTEXT_HEADER, CONTEXT_VALUE)])
        print(f"# published {n} packets in {time.monotonic() - started:.0f} s", file=sys.stderr)
        started = time.monotonic()
        writer = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with psycopg.connect(f"{PG} dbname={db}", autocommit=True) as conn:
            while (conn.execute(b"SELECT count(*) FROM bench_events").fetchone() or (0,))[0] < n:
                time.sleep(1)
        time.sleep(3)  # the last commit
        writer.send_signal(signal.SIGTERM)
        writer.wait(60)
        print(f"# landed in {time.monotonic() - started:.0f} s", file=sys.stderr)

        with open_reader(BOOTSTRAP) as reader:
            marks = reader.watermarks(topic)
        tenth = ",".join(f"{p}:{high - (high - low) // 10}" for p, (low, high) in sorted(marks.items()))
        for label, extra in (("the last tenth (`--from-offsets`)", ["--from-offsets", tenth]), ("the topic", [])):
            took, rss, out, _ = timed(["audit", "-c", str(config), "--json", *extra])
            report = json.loads(out)
            assert report["missing"] == 0 and report["landed"] == report["total"], report
            rows.append(f"| `kapow audit` | {report['total']:,} packets, {label}: all landed, 0 missing | "
                        f"{took:.1f} s | {report['total'] / took:,.0f} /s | {rss:.0f} MB |")
            print(rows[-1], file=sys.stderr)

        if args.no_dlq:
            return 0
        started = time.monotonic()
        produce(system, ((i, b'{"parked": %d}' % i) for i in range(n)), parked(db, topic, n))
        print(f"# parked {n} records in {time.monotonic() - started:.0f} s", file=sys.stderr)
        before = count(topic)
        until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((T0 + n // 10 - 1) / 1000)) + \
            f".{(T0 + n // 10 - 1) % 1000:03d}Z"
        moved = 0
        for label, extra in (("the oldest tenth (`--until`)", ["--until", until]), ("the rest (`--all`)", ["--all"])):
            took, rss, out, _ = timed(["dlq", "reschedule", "-c", str(config), "--json", *extra])
            done = json.loads(out)["count"]
            moved += done
            rows.append(f"| `kapow dlq reschedule` | {done:,} of {n:,} parked records, {label} | "
                        f"{took:.1f} s | {done / took:,.0f} /s | {rss:.0f} MB |")
            print(rows[-1], file=sys.stderr)
        copies = count(topic) - before
        assert moved == n and copies == n, (moved, copies)
        print(f"# {copies} copies on {topic}, each once", file=sys.stderr)
    finally:
        print(f"# config: {config}", file=sys.stderr)
        if not args.keep:
            delete_topics(BOOTSTRAP, [topic, user, system, f"{system}.done"])
            with psycopg.connect(f"{PG} dbname=postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'.encode())
    print("| command | workload | time | rate | peak RSS |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
