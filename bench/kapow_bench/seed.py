"""The seed's naive design, rebuilt as a baseline: one consumer, one connection in autocommit, one ``INSERT`` per
packet.

It runs as its own process (``python -m kapow_bench.seed …``) and consumes the same packets from the same kind of
topic as KaPoW's pre-filled runs, so its CPU and its clock (spawn → last ``landed_at``) are measured alike. Offsets
are auto-committed by the client, as the seed did (at most once on a crash; duplicates ignored by
``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kapow.errors import KapowError
from kapow_bench.cpu import CpuMeter, per_packet, proc_peak_rss
from kapow_bench.env import BOOTSTRAP, dsn
from kapow_bench.publish import publish
from kapow_bench.report import Run, load
from kapow_bench.runs import base_run, prepare, settle
from kapow_bench.scratch import Scratch
from kapow_bench.spec import Spec
from kapow_bench.writer import wait_committed


class SeedProcess:
    """The naive writer as a child process, with the face the waiting code expects."""

    def __init__(self, scratch: Scratch, table: str, n: int, workdir: Path) -> None:
        self.log_path = workdir / f"{scratch.base}-seed.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kapow_bench.seed", "--topic", scratch.topic, "--group", scratch.group,
             "--database", scratch.databases[0], "--table", table, "-n", str(n)],
            stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        self.pid = self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None and self.proc.returncode != 0:
            raise KapowError(f"the naive seed writer failed: {self.log_path.read_text(errors='replace')[-400:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self._log.close()


def run_seed(spec: Spec, *, n: int, partitions: int, run_no: int, workdir: Path) -> Run:
    """The naive writer on a pre-filled topic, clocked from its spawn to its last row, like KaPoW's."""
    run = base_run("seed-naive", spec, clock="prefilled", n=n, run_no=run_no, partitions=partitions, batch=1,
                   connections=1, writers=1)
    with Scratch(spec, partitions=partitions, tag="kbs") as scratch:
        work = prepare(scratch, spec, n)
        publish(scratch.topic, work)
        meter = CpuMeter(scratch.databases).start()
        start = time.time()
        proc = SeedProcess(scratch, work.tables[0].name, n, workdir)
        meter.watch(proc.pid)
        try:
            # auto-commit every 5 s: the wait may end a few seconds late; the clock is the database's, not this
            wait_committed(scratch.group, scratch.topic, f"seed naive {spec.label} #{run_no}", [proc],
                           timeout=max(300.0, n / 100))
            cpu = meter.stop()
            run["peak_rss_mib"] = round(proc_peak_rss(proc.pid) / 2**20, 1)
        finally:
            meter.stop()
            proc.close()
        run.update(per_packet(cpu, n))
        settle(run, work, start)
    run["load_after"] = load()
    return run


def seed_writer(topic: str, group: str, database: str, table: str, n: int) -> int:
    """The naive design, on purpose: per packet, decode the JSON and run one autocommitted INSERT.

    It stops after N packets, then idles until stopped, so that its CPU time and peak RSS can still be read (and
    the client's background auto-commit still runs).
    """
    import msgspec
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": True, "auto.commit.interval.ms": 1000})
    consumer.subscribe([topic])
    done = 0
    statements: dict[tuple[str, ...], sql.Composed] = {}
    with psycopg.connect(dsn(database, application="kapow-seed"), autocommit=True) as conn:
        while done < n:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            data: dict[str, Any] = msgspec.json.decode(msg.value() or b"null")["data"]
            cols = tuple(data)
            stmt = statements.get(cols)
            if stmt is None:
                stmt = statements[cols] = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
                    sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)),
                    sql.SQL(", ").join(sql.Placeholder() * len(cols)))
            conn.execute(stmt, tuple(data.values()))
            done += 1
    while True:  # keep the process (and its /proc numbers, its auto-commit) until the harness has read them
        time.sleep(0.2)
        consumer.poll(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kapow_bench.seed",
                                description="the naive writer: one INSERT per packet, autocommit, one connection")
    for name in ("topic", "group", "database", "table"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("-n", type=int, required=True)
    args = p.parse_args(argv)
    return seed_writer(args.topic, args.group, args.database, args.table, args.n)


if __name__ == "__main__":
    raise SystemExit(main())
