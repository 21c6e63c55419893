"""What every KaPoW number is divided by: the seed's naive design, the database's ceiling, and the peer.

* ``seed-naive``: the design KaPoW replaced: one consumer, one connection in autocommit, one ``INSERT`` per
  packet. It runs as its own process (``python -m kapow.bench.baselines seed …``) and consumes the same packets
  from the same kind of topic, so its CPU and the clock are measured exactly like KaPoW's pre-filled runs.
* ``copy``: no Kafka at all: the same typed rows, already in COPY text form, streamed by ``COPY … FROM STDIN``
  into the same table over 1 or 2 connections. Nothing that lands rows in this table on this server can beat
  it by much, so KaPoW's rate over it says how much of the database's capacity the pipeline leaves unused.
* ``peer``: Kafka Connect 4.3.1 + Debezium JDBC sink 3.5.0.Final, ``bench/peer/peer.py``'s ``run_peer``, on
  the same rows, the same table and the same partitions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from kapow.bench import workload as wl
from kapow.bench.report import Progress, Run, load


def run_peer_side(*, n: int, partitions: int, batch: int, connections: int, run_no: int) -> Run:
    """The peer on the 250b rows; its clock (JVM start to last row) and ours (``landed_at``) both reported."""
    peer = wl.load_peer()
    run: Run = {"kind": "peer", "mode": "prefilled", "preset": "250b", "packets": n, "partitions": partitions,
                "batch": batch, "connections": partitions, "writers": 1, "run": run_no, "load_before": load()}
    with wl.Scratch(partitions=partitions, tag="kbp") as scratch:
        work = wl.make_workload("250b", n, scratch.database)
        scratch.create(work.ddl)
        bar = Progress(f"peer (Connect+Debezium) #{run_no}", n)
        result: dict[str, Any] = peer.run_peer(
            bootstrap=wl.BOOTSTRAP, pg_dsn=wl.ADMIN_DSN, database=scratch.database, table=work.table,
            rows=work.rows, partitions=partitions, batch_size=batch,
            work_dir=Path(tempfile.gettempdir()) / "kapow-peer", progress=bar)
        bar.done(f"peer landed {n:,}")
        _rows, first, last = wl.landed(scratch.database, work.table)
        assert first is not None and last is not None
        landing = float(result["landing_seconds"])
        run.update({
            "seconds": landing, "packets_per_s": round(n / landing, 1), "packets_per_min": round(60 * n / landing),
            "first_to_last_s": round(last - first, 3), "steady_packets_per_s": round(n / max(last - first, 1e-6), 1),
            "publish_seconds": result["publish_seconds"], "cpu_seconds": result["jvm_cpu_seconds"],
            "peak_rss_mib": result["jvm_peak_rss_mib"], "value_bytes": _peer_value_bytes(peer, work.rows),
            "connector_version": result["connector_version"], "load_after": load(),
            **wl.verify(scratch.database, work),
        })
    return run


def _peer_value_bytes(peer: Any, rows: list[dict[str, Any]]) -> float:
    sample = rows[:1000]
    return round(sum(len(peer.encode_record(r)[1]) for r in sample) / max(1, len(sample)), 1)


def run_seed(*, preset: str, n: int, partitions: int, run_no: int, workdir: Path) -> Run:
    """The naive writer on a pre-filled topic, clocked from its spawn to its last row, like KaPoW's."""
    from kapow.bench.harness import wait_landed

    run: Run = {"kind": "seed-naive", "mode": "prefilled", "preset": preset, "packets": n, "partitions": partitions,
                "batch": 1, "connections": 1, "writers": 1, "run": run_no, "load_before": load()}
    with wl.Scratch(partitions=partitions, tag="kbs") as scratch:
        work = wl.make_workload(preset, n, scratch.database)
        scratch.create(work.ddl)
        wl.publish(scratch.topic, work.values, work.keys)
        start = time.time()
        proc = _SeedProcess(scratch, work, workdir)
        try:
            wait_landed(scratch.database, work.table, n, f"seed naive {preset} #{run_no}", [proc],
                        timeout=max(300.0, n / 100))
            cpu, rss = proc.stats()
        finally:
            proc.close()
        _rows, first, last = wl.landed(scratch.database, work.table)
        assert first is not None and last is not None
        run.update({
            "seconds": round(last - start, 3), "packets_per_s": round(n / (last - start), 1),
            "packets_per_min": round(60 * n / (last - start)), "first_to_last_s": round(last - first, 3),
            "steady_packets_per_s": round(n / max(last - first, 1e-6), 1), "cpu_seconds": round(cpu, 2),
            "cpu_us_per_packet": round(1e6 * cpu / n, 1), "peak_rss_mib": round(rss / 2**20, 1),
            "value_bytes": round(work.mean_value_bytes, 1), "load_after": load(),
            **wl.verify(scratch.database, work),
        })
    return run


class _SeedProcess:
    """The naive writer as a child process, with the same face as a WriterProcess for the waiting code."""

    def __init__(self, scratch: wl.Scratch, work: wl.Workload, workdir: Path) -> None:
        import subprocess

        from kapow.bench.harness import proc_stats

        self._stats = proc_stats
        self.log_path = workdir / f"{scratch.base}-seed.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kapow.bench.baselines", "seed", "--topic", scratch.topic, "--group",
             scratch.group, "--database", scratch.database, "--table", work.table, "-n", str(work.n)],
            stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)

    def check_alive(self) -> None:
        from kapow.errors import KapowError

        if self.proc.poll() is not None and self.proc.returncode != 0:
            raise KapowError(f"the naive seed writer failed: {self.log_path.read_text(errors='replace')[-400:]}")

    def stats(self) -> tuple[float, int]:
        return self._stats(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self._log.close()


def seed_writer(topic: str, group: str, database: str, table: str, n: int) -> int:
    """The naive design, on purpose: per packet, decode the JSON and run one autocommitted INSERT.

    Offsets are auto-committed by the client, as the seed did (at most once on a crash, duplicates ignored by
    ``ON CONFLICT DO NOTHING``). It stops after N packets, then idles until stopped, so that its CPU time and
    peak RSS can still be read.
    """
    import msgspec
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": wl.BOOTSTRAP, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": True})
    consumer.subscribe([topic])
    done = 0
    statements: dict[tuple[str, ...], sql.Composed] = {}
    with psycopg.connect(wl.dsn(database), autocommit=True) as conn:
        while done < n:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            data = msgspec.json.decode(msg.value() or b"null")["data"]
            cols = tuple(data)
            stmt = statements.get(cols)
            if stmt is None:
                stmt = statements[cols] = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
                    sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)),
                    sql.SQL(", ").join(sql.Placeholder() * len(cols)))
            conn.execute(stmt, tuple(data.values()))
            done += 1
    consumer.close()
    while True:  # keep the process (and its /proc numbers) until the harness has read them
        time.sleep(1)


def _copy_text(work: wl.Workload) -> list[bytes]:
    """The rows as COPY text lines (typed values in their text form; NULL as \\N)."""
    def field(v: object) -> str:
        return "\\N" if v is None else str(v)

    return [("\t".join(field(r.get(c)) for c in work.columns) + "\n").encode() for r in work.rows]


def run_copy(*, preset: str, n: int, connections: int, run_no: int) -> Run:
    """Plain ``COPY`` of the same rows into the same table: the database's ceiling for this table here."""
    run: Run = {"kind": f"copy-ceiling-{connections}conn", "mode": "no-kafka", "preset": preset, "packets": n,
                "connections": connections, "run": run_no, "load_before": load()}
    with wl.Scratch(partitions=1, tag="kbc") as scratch:
        work = wl.make_workload(preset, n, scratch.database)
        scratch.create(work.ddl)
        lines = _copy_text(work)
        chunks = [b"".join(lines[i::connections]) for i in range(connections)]
        conns = [psycopg.connect(wl.dsn(scratch.database)) for _ in range(connections)]
        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(work.table), sql.SQL(", ").join(map(sql.Identifier, work.columns)))
        errors: list[BaseException] = []

        def copy(conn: psycopg.Connection[Any], chunk: bytes) -> None:
            try:
                with conn.cursor() as cur, cur.copy(stmt) as cp:
                    for i in range(0, len(chunk), 1 << 20):
                        cp.write(chunk[i:i + (1 << 20)])
                conn.commit()
            except BaseException as exc:
                errors.append(exc)

        try:
            start = time.time()
            threads = [threading.Thread(target=copy, args=(c, ch)) for c, ch in zip(conns, chunks, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.time() - start
        finally:
            for c in conns:
                c.close()
        if errors:
            raise errors[0]
        run.update({"seconds": round(seconds, 3), "packets_per_s": round(n / seconds, 1),
                    "packets_per_min": round(60 * n / seconds), "load_after": load(),
                    **wl.verify(scratch.database, work)})
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kapow.bench.baselines")
    sub = p.add_subparsers(dest="what", required=True)
    seed = sub.add_parser("seed", help="the naive writer: one INSERT per packet, autocommit, one connection")
    for name in ("topic", "group", "database", "table"):
        seed.add_argument(f"--{name}", required=True)
    seed.add_argument("-n", type=int, required=True)
    args = p.parse_args(argv)
    return seed_writer(args.topic, args.group, args.database, args.table, args.n)


if __name__ == "__main__":
    raise SystemExit(main())
