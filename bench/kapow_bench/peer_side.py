"""The peer on a workload: the same records (or the same rows as Connect JSON) into the same table, metered alike.

Insert and plain-JSON workloads reach the peer as flat Connect rows (``peer.records``), landed with
``insert.mode=upsert`` (idempotent under redelivery, as an at-least-once writer must be; plain ``insert`` was
measured no faster and would fail on a replayed batch). Upserts turn on the sink's reduction buffer (keys repeat
inside a batch). Change events are the very bytes KaPoW's ``debezium`` route reads, landed with deletes enabled.
Deletes by key are not compared: the flat-row peer would need tombstones, a different input.

The clock is KaPoW's pre-filled one: from the JVM's start to the database's stamp of the last row, and the CPU
meter runs from the JVM's start until the table is done, before the JVM is stopped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kapow.errors import KapowError
from kapow_bench.cpu import CpuMeter, per_packet
from kapow_bench.env import ADMIN_DSN, BOOTSTRAP
from kapow_bench.report import Progress, Run, load
from kapow_bench.runs import base_run, prepare, settle
from kapow_bench.scratch import Scratch
from kapow_bench.spec import Spec
from kapow_bench.tables import read_state


def peer_supports(spec: Spec) -> bool:
    return spec.tables == 1 and spec.mode != "delete" and spec.size == 250


def run_peer_side(spec: Spec, *, n: int, partitions: int, batch: int, run_no: int) -> Run:
    """One landing of ``spec``'s data by Connect + the Debezium JDBC sink."""
    from kapow_bench.peer.connect import run_peer
    from kapow_bench.peer.records import RecordEncoder

    if not peer_supports(spec):
        raise KapowError(f"bench: the peer runs single-table inserts, upserts and routes of 250 B, not {spec.label}")
    run = base_run("peer", spec, clock="prefilled", n=n, run_no=run_no, partitions=partitions, batch=batch,
                   connections=partitions, writers=1)
    with Scratch(spec, partitions=partitions, tag="kbp") as scratch:
        work = prepare(scratch, spec, n)
        if spec.route == "debezium":
            records = list(zip(work.keys, work.values, strict=True))
        else:
            encoder = RecordEncoder(work.shape.columns)
            records = [encoder.encode(r) for r in work.rows]
        meter = CpuMeter(scratch.databases)
        cpu: dict[str, Any] = {}

        def on_start(pid: int) -> None:
            meter.start()
            meter.watch(pid)

        def landed() -> tuple[int, bool]:
            state = read_state(work)
            return state.got.rows, state.got == work.expect

        bar = Progress(f"peer {spec.label} #{run_no}", n)
        try:
            result = run_peer(
                bootstrap=BOOTSTRAP, pg_dsn=ADMIN_DSN, database=work.tables[0].database,
                table=work.tables[0].name, records=records, landed=landed, partitions=partitions, batch_size=batch,
                work_dir=Path(tempfile.gettempdir()) / "kapow-peer", insert_mode="upsert",
                delete_enabled=spec.route == "debezium",
                reduction_buffer=spec.mode == "upsert" or spec.route == "debezium",
                on_start=on_start, on_landed=lambda: cpu.update(meter.stop()), progress=bar)
        finally:
            meter.stop()
        bar.done(f"peer landed {spec.label}")
        run.update(per_packet(cpu, n))
        settle(run, work, float(result["jvm_started_at"]))
        run.update({"publish_seconds": result["publish_seconds"], "peak_rss_mib": result["jvm_peak_rss_mib"],
                    "value_bytes": round(sum(len(v) for _k, v in records[:1000]) / min(1000, len(records)), 1),
                    "connector_version": result["connector_version"], "load_after": load()})
    return run
