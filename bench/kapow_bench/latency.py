"""Latency at a steady rate: record timestamp → row inserted, per row, over one table or spread over many.

``created_at`` is set to the wall clock the moment each packet is produced (the record's own timestamp is taken in
the same call, at millisecond precision); ``landed_at`` is the database's ``clock_timestamp()`` while the row is
inserted, a moment before its transaction commits. On one table a poller counting rows every 20 ms gives the other
end as a check: the time the k-th row became visible to a reader, minus the time the k-th packet was published (an
upper bound, within one poll). Spread over many tables, counting them all every 20 ms would cost more than the
writer, so only the per-row figure is taken there.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec
from psycopg import sql

from kapow.contract import CONTEXT_HEADER, CONTEXT_VALUE
from kapow_bench.env import BOOTSTRAP, connect
from kapow_bench.report import Progress, Run, load, percentile
from kapow_bench.runs import base_run
from kapow_bench.scratch import Scratch
from kapow_bench.spec import Spec
from kapow_bench.tables import latencies_ms, read_state
from kapow_bench.workload import Workload, build
from kapow_bench.writer import WriterProcess, wait_committed

WARM_UP = 200


def run_latency(spec: Spec, *, rate: int, duration: float, partitions: int, batch: int, connections: int,
                run_no: int, workdir: Path) -> Run:
    """Publish ``rate`` packets/s for ``duration`` s while one writer lands them; percentiles of every row's latency."""
    import datetime as dt

    from kapow.kafka.clients import make_producer

    n = int(rate * duration)
    run = base_run("latency", spec, clock="steady", n=n, run_no=run_no, partitions=partitions, batch=batch,
                   connections=connections, writers=1, rate=rate, duration=duration)
    with Scratch(spec, partitions=partitions) as scratch:
        work = build(spec, n + WARM_UP, scratch.tables)
        scratch.create(work.shape)
        writer = WriterProcess(scratch.config(batch=batch, connections=connections), workdir, scratch.base)
        stop = threading.Event()
        polls: list[tuple[float, int]] = []
        try:
            writer.wait_assigned()
            time.sleep(1.0)
            # The client a latency-minded user runs: kapow's producer defaults (linger.ms 5, lz4, acks=all).
            producer = make_producer(BOOTSTRAP, {"log_level": 3})  # no info lines from its teardown
            encode = msgspec.json.Encoder().encode
            headers: list[tuple[str, str | bytes | None]] = [(CONTEXT_HEADER, CONTEXT_VALUE)]

            def send(i: int, *, now: bool) -> None:
                row = dict(work.rows[i])
                if now:
                    row["created_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                value = work.prefixes[work.table_of[i]] + encode(row) + b"}"
                producer.produce(scratch.topic, value=value, key=work.keys[i], headers=headers)
                producer.poll(0)

            # Warm-up, then forget it: the producer's idempotence handshake and the writer's first catalog reads
            # and connections happen once per process (and per table), not per packet.
            for i in range(n, n + WARM_UP):
                send(i, now=False)
                time.sleep(1 / rate)
            producer.flush(30)
            wait_committed(scratch.group, scratch.topic, "latency: warm-up", [writer], timeout=60)
            sent: list[float] = []
            poller = threading.Thread(target=_poll, args=(work, n, stop, polls), daemon=True)
            if spec.tables == 1:
                poller.start()
            bar = Progress(f"latency {rate}/s x {duration:.0f} s", n)
            start = time.time()
            for i in range(n):
                wait = start + i / rate - time.time()
                if wait > 0:
                    time.sleep(wait)
                sent.append(time.time())
                send(i, now=True)
                if i % 500 == 0:
                    bar(i)
            producer.flush(30)
            bar.done(f"published {n:,} at {n / (time.time() - start):,.0f}/s")
            wait_committed(scratch.group, scratch.topic, "latency: landing the tail", [writer], timeout=60)
            if poller.is_alive():
                poller.join(5)
            lat = latencies_ms(work, max_key=n)  # the warm-up's rows have the keys above n
            state = read_state(work)
            visible = _visible(sent, polls)
            run.update({
                "p50_ms": round(percentile(lat, 50), 2), "p95_ms": round(percentile(lat, 95), 2),
                "p99_ms": round(percentile(lat, 99), 2), "max_ms": round(lat[-1], 2) if lat else 0.0,
                "mean_ms": round(sum(lat) / max(1, len(lat)), 2),
                "visible_p50_ms": round(percentile(visible, 50), 2) if visible else None,
                "visible_p99_ms": round(percentile(visible, 99), 2) if visible else None,
                "peak_rss_mib": round(writer.peak_rss() / 2**20, 1), "rows": state.got.rows,
                "exact": state.got == work.expect and len(lat) == n, "load_after": load(),
            })
        finally:
            stop.set()
            writer.close()
    return run


def _poll(work: Workload, n: int, stop: threading.Event, polls: list[tuple[float, int]]) -> None:
    table = work.tables[0]
    with connect(table.database) as conn:
        while not stop.is_set():
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.name))).fetchone()
            got = (int(row[0]) if row else 0) - WARM_UP  # the warm-up's rows stay in the table
            polls.append((time.time(), got))
            if got >= n:
                return
            time.sleep(0.02)


def _visible(sent: list[float], polls: list[tuple[float, int]]) -> list[float]:
    """For each k, the first poll that counted >= k rows, minus the k-th publish time, in ms (sorted)."""
    out: list[float] = []
    k = 0
    for t, got in polls:
        while k < got and k < len(sent):
            out.append(max(0.0, (t - sent[k]) * 1000))
            k += 1
    return sorted(out)

