"""One measured landing of a workload by KaPoW's writer, with the COPY ceiling of the same data in the same run.

Two clocks:

* ``prefilled``: the topic holds all N records first; the clock starts when the writer process is spawned (Python
  start-up and the group join included) and stops at the database's stamp of the last row (or statement).
  ``steady_packets_per_s`` is N over the first-to-last stamp: the sustained rate, without start-up.
* ``live``: the writer is up and owns its partitions; the clock runs from the first publish to the last stamp,
  publishing (by the harness, on the same cores) included.

Every run reports CPU per packet of the writer, the PostgreSQL backends serving it and the broker
(:mod:`kapow_bench.cpu`), the writer's peak RSS, and proves the final state (:class:`kapow_bench.workload.Expect`).
Then the same tables are truncated and the ceiling's rows COPYed into them (:func:`kapow_bench.tables.copy_rows`),
so ``steady_over_ceiling`` compares two figures taken minutes apart on the same machine, not across sessions.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from kapow.errors import KapowError
from kapow_bench.cpu import CpuMeter, per_packet, proc_cpu
from kapow_bench.publish import publish
from kapow_bench.report import Progress, Run, load
from kapow_bench.scratch import Scratch
from kapow_bench.spec import Spec
from kapow_bench.tables import copy_rows, read_state, reset_clock, sample_matches, truncate
from kapow_bench.workload import Workload, build
from kapow_bench.writer import WriterProcess, wait_committed


def base_run(kind: str, spec: Spec, *, clock: str, n: int, run_no: int, **knobs: Any) -> Run:
    """The fields that say which measurement a run repeats (the report takes medians over runs that share them)."""
    return {"kind": kind, "workload": spec.label, "clock": clock, "mode": spec.mode, "route": spec.route,
            "size": spec.size, "tables": spec.tables, "databases": spec.databases, "skew": spec.skew,
            "version": spec.version, "own_names": spec.own_names,
            "packets": n, **knobs, "run": run_no, "load_before": load()}


def prepare(scratch: Scratch, spec: Spec, n: int) -> Workload:
    """Build the records, create the tables and load what must be there before the clock starts."""
    work = build(spec, n, scratch.tables, source=scratch.base)
    scratch.create(work.shape)
    if work.preload:
        copy_rows(work, work.preload, connections=2)
        reset_clock(work)
    return work


def settle(run: Run, work: Workload, start: float) -> None:
    """Read the final state and the database's clock into ``run``; fail in one line if nothing was stamped."""
    state = read_state(work)
    if state.first is None or state.last is None:
        raise KapowError(f"{work.spec.label}: the tables were never written (see the writer's log)")
    n = work.n
    seconds = max(state.last - start, 1e-6)
    steady = max(state.last - state.first, 1e-6)
    run.update({
        "seconds": round(seconds, 3), "packets_per_s": round(n / seconds, 1),
        "first_to_last_s": round(steady, 3), "steady_packets_per_s": round(n / steady, 1),
        "value_bytes": round(work.mean_value_bytes, 1), "rows": state.got.rows,
        "sample_matches": sample_matches(work),
    })
    run["exact"] = state.got == work.expect and run["sample_matches"]


def ceiling(run: Run, work: Workload, connections: int) -> None:
    """The COPY ceiling of the same data into the same (truncated) tables, and the writer's share of it."""
    truncate(work)
    seconds = copy_rows(work, work.ceiling_rows(), connections=connections)
    rate = work.n / max(seconds, 1e-6)
    run.update({"ceiling_packets_per_s": round(rate, 1), "ceiling_connections": connections,
                "over_ceiling": round(run["packets_per_s"] / rate, 4),
                "steady_over_ceiling": round(run["steady_packets_per_s"] / rate, 4)})


def run_kapow(spec: Spec, *, clock: str, n: int, partitions: int, batch: int, connections: int, writers: int,
              run_no: int, workdir: Path, ceiling_connections: int = 2, profile: Path | None = None) -> Run:
    """Land N records of ``spec`` with ``writers`` KaPoW processes; then the COPY ceiling (unless 0 connections)."""
    run = base_run("kapow", spec, clock=clock, n=n, run_no=run_no, partitions=partitions, batch=batch,
                   connections=connections, writers=writers)
    with Scratch(spec, partitions=partitions) as scratch:
        work = prepare(scratch, spec, n)
        config = scratch.config(batch=batch, connections=connections)
        label = f"kapow {spec.label} {clock} #{run_no}"
        procs: list[WriterProcess] = []
        meter = CpuMeter(scratch.databases)
        try:
            if clock == "live":
                for i in range(writers):  # one at a time: each join rebalances the ones before it
                    procs.append(WriterProcess(config, workdir, f"{scratch.base}-{i}"))
                    procs[-1].wait_assigned()
                time.sleep(0.5 if writers == 1 else 2.0)
                meter.start()
                for p in procs:
                    meter.watch(p.pid, from_zero=False)
                start = time.time()
                _publish(scratch.topic, work, run)
            else:
                _publish(scratch.topic, work, run)
                meter.start()
                start = time.time()
                for i in range(writers):
                    procs.append(WriterProcess(config, workdir, f"{scratch.base}-{i}", profile=profile))
                    meter.watch(procs[-1].pid)
                startup = threading.Thread(target=_startup_cpu, args=(procs, run), daemon=True)
                startup.start()
            wait_committed(scratch.group, scratch.topic, label, list(procs), timeout=max(120.0, n / 500))
            cpu = meter.stop()
            run["peak_rss_mib"] = round(max(p.peak_rss() for p in procs) / 2**20, 1)
        finally:
            meter.stop()
            for p in procs:
                p.close()
        run.update(per_packet(cpu, n))
        if "cpu_writer_startup_s" in run and cpu["writer"] is not None:
            landing = cpu["writer"] - run["cpu_writer_startup_s"]
            run["cpu_landing_us_per_packet"] = round(1e6 * landing / n, 2)
        settle(run, work, start)
        if ceiling_connections:
            ceiling(run, work, ceiling_connections)
    run["load_after"] = load()
    return run


def _startup_cpu(procs: list[WriterProcess], run: Run) -> None:
    """The writers' CPU until they own their partitions (imports, config checks, group join): paid once per
    process, not per packet, so ``cpu_landing_us_per_packet`` leaves it out."""
    with contextlib.suppress(KapowError):
        for p in procs:
            p.wait_assigned()
        run["cpu_writer_startup_s"] = round(sum(proc_cpu(p.pid) for p in procs), 3)


def _publish(topic: str, work: Workload, run: Run) -> None:
    bar = Progress(f"publish {work.n:,}", work.n)
    t = time.time()
    publish(topic, work, bar)
    run["publish_seconds"] = round(time.time() - t, 3)
    bar.done(f"published {work.n:,} in {run['publish_seconds']:.1f} s")
