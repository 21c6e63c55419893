"""Which runs the options ask for, in what order, and what is written at the end.

``--all`` (``make bench``) is one list of workloads: inserts of 250 and 12 bytes, upserts (with and without the
version guard), deletes, both routes, traffic spread over 100, 1,000 and 10,000 tables (and a zipf-skewed 1,000),
each landed by KaPoW with the COPY ceiling in the same run; the peer on the workloads it can land; latency on one
table and over 1,000; the seed's naive writer; the sweep. Runs are interleaved (round 1 of every kind, then round
2 …) so a burst of foreign load on the shared machine hits every kind alike; the report gives medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kapow.errors import KapowError
from kapow_bench.env import check_services
from kapow_bench.peer_side import peer_supports, run_peer_side
from kapow_bench.report import Run, machine, relate, say, summarise, table
from kapow_bench.runs import run_kapow
from kapow_bench.spec import Spec
from kapow_bench.writer import precompile

ALL_SPECS = (
    Spec(), Spec(size=12), Spec(mode="upsert"), Spec(mode="upsert", version=True), Spec(mode="delete"),
    Spec(route="json"), Spec(route="debezium"),
    Spec(tables=100, databases=4), Spec(tables=1000, databases=4), Spec(tables=1000, databases=4, skew=1.0),
    Spec(tables=10_000, databases=10),
)
ALL_PEER = (Spec(), Spec(mode="upsert"), Spec(route="debezium"))
ALL_LATENCY = (Spec(), Spec(tables=1000, databases=4))


def plan(args: argparse.Namespace) -> tuple[list[Spec], list[Spec], list[Spec]]:
    """(workloads KaPoW lands, workloads the peer lands, latency workloads), each checked."""
    if args.all:
        return list(ALL_SPECS), list(ALL_PEER), list(ALL_LATENCY)
    specs: list[Spec] = []
    for size in args.size or [250]:
        spec = Spec(mode=args.mode, route=args.route, size=size, tables=args.tables, databases=args.databases,
                    skew=args.skew, version=args.version, repeats=args.repeats, own_names=args.own_names).check()
        if spec.tables > 1 and not args.no_reference:
            specs.append(replace(spec, tables=1, databases=1, skew=0.0, own_names=False))
        specs.append(spec)
    peer = [s for s in specs if peer_supports(s)] if args.peer else []
    latency = [s for s in specs if s.stamps_rows and s.route is None and s.size == 250] if args.latency else []
    if args.latency and not latency:
        raise KapowError("bench: --latency measures inserts of 250 B (one table or spread): drop --mode/--route")
    return specs, peer, latency


def check(args: argparse.Namespace) -> None:
    if min(args.packets, args.runs, args.partitions, args.writers, args.batch, args.connections) < 1:
        raise KapowError("bench: --packets, --runs, --partitions, --writers, --batch and --connections must be >= 1")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise KapowError("bench: --plot needs matplotlib: pip install -e '.[bench]'") from None


def main_bench(args: argparse.Namespace) -> int:
    """Run what the options ask, print the medians, write JSON and the plot; 1 if any run was not exact."""
    from kapow_bench.latency import run_latency
    from kapow_bench.seed import run_seed

    if args.all:
        args.latency = args.peer = args.baselines = args.sweep = args.live = True
    check(args)
    precompile()
    specs, peer, latency = plan(args)
    info = machine(check_services())
    say(f"kapow bench on {info['nproc']} cores, {info['memory_gib']} GiB, load {info['loadavg_at_start'][0]:.2f}")
    workdir = Path(args.keep_logs) if args.keep_logs else Path(tempfile.mkdtemp(prefix="kapow-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    knobs: dict[str, Any] = {"partitions": args.partitions, "batch": args.batch, "connections": args.connections}
    try:
        for r in range(1, args.runs + 1):
            for spec in specs:
                live = args.live and spec.stamps_rows and spec.tables == 1 and spec.route is None
                for clock in ("prefilled", "live") if live else ("prefilled",):
                    runs.append(run_kapow(spec, clock=clock, n=args.packets, writers=args.writers, run_no=r,
                                          workdir=workdir, ceiling_connections=args.ceiling_connections, **knobs))
            for spec in peer:
                runs.append(run_peer_side(spec, n=args.packets, partitions=args.partitions, batch=args.batch,
                                          run_no=r))
            if args.baselines:
                for spec in [s for s in specs if s.stamps_rows and s.tables == 1 and s.route is None]:
                    runs.append(run_seed(spec, n=min(args.seed_packets, args.packets), partitions=args.partitions,
                                         run_no=r, workdir=workdir))
            for spec in latency:
                runs.append(run_latency(spec, rate=args.rate, duration=args.duration, run_no=r, workdir=workdir,
                                        **knobs))
        if args.profile:
            run_kapow(specs[-1], clock="prefilled", n=args.packets, writers=1, run_no=0, workdir=workdir,
                      ceiling_connections=0, profile=Path(args.profile), **knobs)
            say(f"profile of the writer: {args.profile}")
        if args.sweep:
            runs.extend(sweep(args, workdir))
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = relate(summarise(runs))
    print(table(summary))
    result = {"machine": info, "argv": sys.argv[1:], "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "summary": summary, "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        say(f"results: {args.json}")
    if args.plot:
        from kapow_bench.plot import plot

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
            run = run_kapow(Spec(), clock="prefilled", n=args.sweep_packets, run_no=r, workdir=workdir,
                            ceiling_connections=0, partitions=point["partitions"], batch=point["batch"],
                            connections=point["connections"], writers=point["writers"])
            run["sweep"] = True
            out.append(run)
    return out
