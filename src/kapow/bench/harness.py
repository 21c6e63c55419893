"""Run the measurements: KaPoW's writer as its own process, against fresh topics and databases.

The writer runs as ``python -m kapow run -c FILE``, exactly as in production, so its CPU time and peak RSS are
its own (``/proc/<pid>/stat`` and ``VmHWM``), not the harness's, which publishes and polls meanwhile.

Two throughput modes:

* ``live``: the writer is up and has its partitions; the clock starts at the first publish and stops at the
  last row's ``landed_at``. This is "first publish to last row committed", publishing included.
* ``prefilled``: the topic holds all N packets first; the clock starts when the writer process is spawned
  (Python start-up and the group join included) and stops at the last row. ``steady_packets_per_s`` is N over
  first-to-last ``landed_at``: the sustained landing rate, without start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import psycopg

from kapow.bench import workload as wl
from kapow.bench.report import Progress, Run, load, machine, percentile, say, summarise, table
from kapow.errors import KapowError


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and peak RSS bytes of a live process; zeros once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        hwm = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
        return cpu, hwm
    except (OSError, ValueError, IndexError):
        return 0.0, 0


class WriterProcess:
    """One ``kapow run`` process with its own config and log; stopped with SIGTERM (then SIGKILL) on close."""

    def __init__(self, config: str, workdir: Path, name: str, *, profile: Path | None = None) -> None:
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config)
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.spawned = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(self.config_path)],
                                     stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        self._spy: subprocess.Popen[bytes] | None = None
        if profile is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            self._spy = subprocess.Popen([spy, "record", "-f", "raw", "-r", "100", "--threads", "-o", str(profile),
                                          "-p", str(self.proc.pid)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise KapowError(f"the writer exited with {self.proc.returncode}: {' | '.join(tail)[-400:]}")

    def wait_assigned(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while b"partitions assigned" not in self.log_path.read_bytes():
            self.check_alive()
            if time.monotonic() > deadline:
                raise KapowError(f"the writer got no partitions within {timeout:.0f} s (log: {self.log_path})")
            time.sleep(0.05)

    def stats(self) -> tuple[float, int]:
        return proc_stats(self.proc.pid)

    def close(self) -> None:
        if self._spy is not None and self._spy.poll() is None:
            self._spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            try:
                self._spy.wait(30)
            except subprocess.TimeoutExpired:
                self._spy.kill()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class Alive(Protocol):
    def check_alive(self) -> None: ...


def wait_landed(database: str, table_name: str, n: int, label: str, procs: list[Alive],
                timeout: float) -> None:
    """Poll ``count(*)`` (twice a second: cheap next to the load) until all N rows are there."""
    bar = Progress(label, n)
    deadline = time.monotonic() + timeout
    with psycopg.connect(wl.dsn(database), autocommit=True) as conn:
        while True:
            got = wl.count(conn, table_name)
            bar(got)
            if got >= n:
                break
            for p in procs:
                p.check_alive()
            if time.monotonic() > deadline:
                raise KapowError(f"{label}: only {got}/{n} rows landed within {timeout:.0f} s")
            time.sleep(0.5 if n > 20_000 else 0.1)
    bar.done()


def _finish(run: Run, scratch: wl.Scratch, work: wl.Workload, procs: list[WriterProcess], start: float,
            ready_cpu: float) -> Run:
    cpu = 0.0
    rss = 0
    for p in procs:
        c, r = p.stats()
        cpu += c
        rss = max(rss, r)
    _rows, first, last = wl.landed(scratch.database, work.table)
    assert first is not None and last is not None
    seconds = last - start
    run.update({
        "seconds": round(seconds, 3), "packets_per_s": round(work.n / seconds, 1),
        "packets_per_min": round(60 * work.n / seconds), "first_to_last_s": round(last - first, 3),
        "steady_packets_per_s": round(work.n / max(last - first, 1e-6), 1),
        "cpu_seconds": round(cpu, 2), "cpu_seconds_landing": round(cpu - ready_cpu, 2),
        "cpu_us_per_packet": round(1e6 * (cpu - ready_cpu) / work.n, 1), "peak_rss_mib": round(rss / 2**20, 1),
        "value_bytes": round(work.mean_value_bytes, 1), "load_after": load(), **wl.verify(scratch.database, work),
    })
    return run


def run_kapow(*, mode: str, preset: str, n: int, partitions: int, batch: int, connections: int, writers: int,
              run_no: int, workdir: Path, profile: Path | None = None) -> Run:
    """One measured landing of N packets by ``writers`` KaPoW processes (``live`` or ``prefilled``)."""
    run: Run = {"kind": "kapow", "mode": mode, "preset": preset, "packets": n, "partitions": partitions,
                "batch": batch, "connections": connections, "writers": writers, "run": run_no, "load_before": load()}
    with wl.Scratch(partitions=partitions) as scratch:
        work = wl.make_workload(preset, n, scratch.database)
        scratch.create(work.ddl)
        config = scratch.config(batch=batch, connections=connections)
        procs: list[WriterProcess] = []
        try:
            label = f"kapow {mode} {preset} P{partitions} b{batch} c{connections} w{writers} #{run_no}"
            if mode == "live":
                for i in range(writers):  # one at a time: each join rebalances the ones before it
                    procs.append(WriterProcess(config, workdir, f"{scratch.base}-{i}"))
                    procs[-1].wait_assigned()
                time.sleep(0.5 if writers == 1 else 2.0)
                ready_cpu = sum(p.stats()[0] for p in procs)
                start = time.time()
                bar = Progress(f"publish {n:,}", n)
                wl.publish(scratch.topic, work.values, work.keys, bar)
                run["publish_seconds"] = round(time.time() - start, 3)
                bar.done(f"published {n:,} in {run['publish_seconds']:.1f} s")
            else:
                bar = Progress(f"pre-fill {n:,}", n)
                t = time.time()
                wl.publish(scratch.topic, work.values, work.keys, bar)
                run["publish_seconds"] = round(time.time() - t, 3)
                bar.done(f"pre-filled {n:,} in {run['publish_seconds']:.1f} s")
                start = time.time()
                for i in range(writers):
                    procs.append(WriterProcess(config, workdir, f"{scratch.base}-{i}", profile=profile))
                ready_cpu = 0.0
            wait_landed(scratch.database, work.table, n, label, list(procs), timeout=max(120.0, n / 1000))
            _finish(run, scratch, work, procs, start, ready_cpu)
        finally:
            for p in procs:
                p.close()
    return run


def run_latency(*, rate: int, duration: float, partitions: int, batch: int, connections: int, run_no: int,
                workdir: Path) -> Run:
    """Publish at a steady rate and measure, per row, record timestamp -> row inserted (``landed_at``).

    ``created_at`` is set to the wall clock the moment each packet is produced (the record's own timestamp is
    taken in the same call, at millisecond precision); ``landed_at`` is the database's ``clock_timestamp()``
    while the row is inserted, a moment before its transaction commits. A poller counting rows every 20 ms
    gives the other end as a check: the time the k-th row became visible to a reader, minus the time the k-th
    packet was published (an upper bound, within one poll).
    """
    from kapow.kafka.clients import make_producer

    n = int(rate * duration)
    run: Run = {"kind": "latency", "mode": "steady", "preset": "250b", "packets": n, "partitions": partitions,
                "batch": batch, "connections": connections, "writers": 1, "run": run_no, "rate": rate,
                "duration": duration, "load_before": load()}
    with wl.Scratch(partitions=partitions) as scratch:
        work = wl.make_workload("250b", n, scratch.database)
        scratch.create(work.ddl)
        writer = WriterProcess(scratch.config(batch=batch, connections=connections), workdir, scratch.base)
        stop = threading.Event()
        polls: list[tuple[float, int]] = []

        def poller() -> None:
            with psycopg.connect(wl.dsn(scratch.database), autocommit=True) as conn:
                while not stop.is_set():
                    got = wl.count(conn, work.table)
                    polls.append((time.time(), got))
                    if got >= n:
                        return
                    time.sleep(0.02)

        try:
            writer.wait_assigned()
            time.sleep(1.0)
            # The client a latency-minded user runs: kapow's producer defaults (linger.ms 5, lz4, acks=all).
            producer = make_producer(wl.BOOTSTRAP)
            prefix = wl.envelope(scratch.database, work.table)
            import msgspec

            encode = msgspec.json.Encoder().encode
            # Warm-up, then forget it: the producer's first send waits for its idempotence handshake and the
            # writer's first batch for its catalog read and connections; both are once per process, not per packet.
            for i, row in enumerate(work.rows[:200]):
                producer.produce(scratch.topic, value=prefix + encode(row_data(row)) + b"}", key=work.keys[i],
                                 headers=wl.HEADERS)
                producer.poll(0)
                time.sleep(1 / rate)
            producer.flush(30)
            wait_landed(scratch.database, work.table, min(200, n), "latency: warm-up", [writer], timeout=60)
            with psycopg.connect(wl.dsn(scratch.database), autocommit=True) as conn:
                conn.execute("DELETE FROM bench_events")
            sent: list[float] = []
            thread = threading.Thread(target=poller, daemon=True)
            thread.start()
            bar = Progress(f"latency {rate}/s x {duration:.0f} s", n)
            start = time.time()
            for i, row in enumerate(work.rows):
                due = start + i / rate
                wait = due - time.time()
                if wait > 0:
                    time.sleep(wait)
                wl.stamp_now(row)
                sent.append(time.time())
                value = prefix + encode(row_data(row)) + b"}"
                producer.produce(scratch.topic, value=value, key=work.keys[i], headers=wl.HEADERS)
                producer.poll(0)
                if i % 500 == 0:
                    bar(i)
            producer.flush(30)
            bar.done(f"published {n:,} at {n / (time.time() - start):,.0f}/s")
            wait_landed(scratch.database, work.table, n, "latency: landing the tail", [writer], timeout=60)
            thread.join(5)
            with psycopg.connect(wl.dsn(scratch.database), autocommit=True) as conn:
                lat = sorted(float(r[0]) * 1000 for r in conn.execute(
                    "SELECT extract(epoch FROM landed_at - created_at) FROM bench_events").fetchall())
            visible = _visible_latencies(sent, polls)
            cpu, rss = writer.stats()
            run.update({
                "p50_ms": round(percentile(lat, 50), 2), "p95_ms": round(percentile(lat, 95), 2),
                "p99_ms": round(percentile(lat, 99), 2), "max_ms": round(lat[-1], 2),
                "mean_ms": round(sum(lat) / len(lat), 2),
                "visible_p50_ms": round(percentile(visible, 50), 2),
                "visible_p99_ms": round(percentile(visible, 99), 2),
                "cpu_seconds": round(cpu, 2), "peak_rss_mib": round(rss / 2**20, 1), "load_after": load(),
                **wl.verify(scratch.database, work),
            })
        finally:
            stop.set()
            writer.close()
    return run


def row_data(row: dict[str, Any]) -> dict[str, Any]:
    """A row as packet data: NULL columns are left out (they take their default, NULL)."""
    return {k: v for k, v in row.items() if v is not None}


def _visible_latencies(sent: list[float], polls: list[tuple[float, int]]) -> list[float]:
    """For each k, the first poll that counted >= k rows, minus the k-th publish time, in ms (sorted)."""
    out: list[float] = []
    k = 0
    for t, got in polls:
        while k < got and k < len(sent):
            out.append(max(0.0, (t - sent[k]) * 1000))
            k += 1
    return sorted(out)


def main_bench(args: argparse.Namespace) -> int:
    """``kapow bench``: run what the options ask, print the medians, write JSON and the plot."""
    from kapow.bench import baselines

    if args.all:
        args.latency = args.peer = args.baselines = args.sweep = True
        args.preset = args.preset or ["250b", "12b"]
    presets: list[str] = args.preset or ["250b"]
    if args.packets < 1 or args.runs < 1 or args.partitions < 1 or args.writers < 1:
        raise KapowError("bench: --packets, --runs, --partitions and --writers must be at least 1")
    if args.plot and not args.sweep:
        raise KapowError("bench: --plot draws the sweep: add --sweep (or --all)")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise KapowError("bench: --plot needs matplotlib: pip install -e '.[bench]'") from None
    wl.check_services()
    with wl.admin_connection() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    info = machine(str(row[0]) if row else "?")
    say(f"kapow bench on {info['nproc']} cores, {info['memory_gib']} GiB, load {info['loadavg_at_start'][0]:.2f}")
    workdir = Path(args.keep_logs) if args.keep_logs else Path(tempfile.mkdtemp(prefix="kapow-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    common = {"partitions": args.partitions, "batch": args.batch, "connections": args.connections}
    try:
        modes = [m for m, skip in (("live", args.no_live), ("prefilled", args.no_prefilled)) if not skip]
        for r in range(1, args.runs + 1):  # interleaved, so that a burst of load hits every kind alike
            for preset in presets:
                for mode in modes:
                    runs.append(run_kapow(mode=mode, preset=preset, n=args.packets, writers=args.writers,
                                          run_no=r, workdir=workdir, **common))
            if args.peer:
                runs.append(baselines.run_peer_side(n=args.packets, run_no=r, **common))
            if args.baselines:
                for preset in presets:
                    runs.append(baselines.run_seed(preset=preset, n=min(args.seed_packets, args.packets),
                                                   partitions=args.partitions, run_no=r, workdir=workdir))
                    for conns in (1, 2):
                        runs.append(baselines.run_copy(preset=preset, n=args.packets, connections=conns, run_no=r))
            if args.latency:
                runs.append(run_latency(rate=args.rate, duration=args.duration, run_no=r, workdir=workdir,
                                        **common))
        if args.profile:
            run_kapow(mode="prefilled", preset="250b", n=args.packets, writers=1, run_no=0, workdir=workdir,
                      profile=Path(args.profile), **common)
            say(f"profile of the writer: {args.profile}")
        if args.sweep:
            runs.extend(sweep(args, workdir))
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(runs)
    print(table(summary))
    result = {"machine": info, "argv": sys.argv[1:], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "summary": summary, "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        say(f"results: {args.json}")
    if args.plot:
        from kapow.bench.plot import plot

        plot(summary, Path(args.plot))
        say(f"plot: {args.plot}")
    return 0 if all(r.get("exact", True) for r in runs) else 1


def sweep(args: argparse.Namespace, workdir: Path) -> list[Run]:
    """Throughput against partitions, batch size, connections and writer processes, one knob at a time."""
    base = {"partitions": 6, "batch": 5000, "connections": 4, "writers": 1}
    points: list[dict[str, int]] = []
    for knob, values in (("partitions", (1, 3, 6, 12)), ("batch", (500, 2000, 5000, 10000)),
                         ("connections", (1, 2, 4, 8)), ("writers", (1, 2))):
        for v in values:
            point = {**base, knob: v}
            if point not in points:
                points.append(point)
    out: list[Run] = []
    for r in range(1, args.runs + 1):
        for point in points:
            run = run_kapow(mode="prefilled", preset="250b", n=args.sweep_packets, run_no=r, workdir=workdir,
                            partitions=point["partitions"], batch=point["batch"],
                            connections=point["connections"], writers=point["writers"])
            run["sweep"] = True
            out.append(run)
    return out
