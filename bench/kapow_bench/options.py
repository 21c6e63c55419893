"""The benchmark's options, apart from the harness so that building the parser imports nothing heavy."""

from __future__ import annotations

import argparse

from kapow_bench.spec import MODES, ROUTES


def add_arguments(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload (one, or --all for every one)")
    w.add_argument("-n", "--packets", type=int, default=300_000, help="packets per throughput run")
    w.add_argument("--size", type=int, action="append", choices=(250, 12),
                   help="bytes of a packet: 250 (events, default) or 12 (ids, inserts only); repeatable")
    w.add_argument("--mode", choices=MODES, default="insert", help="what each packet asks (default insert)")
    w.add_argument("--route", choices=ROUTES,
                   help="land a plain topic through a [[routes]] entry: json rows, or Debezium change events")
    w.add_argument("--version", action="store_true", help='upserts and deletes guarded by "version": "rev"')
    w.add_argument("--repeats", type=int, default=4, help="upsert and debezium: packets per key, on average")
    w.add_argument("--tables", type=int, default=1, help="spread the packets over this many tables")
    w.add_argument("--databases", type=int, default=1, help="... in this many databases (one destination)")
    w.add_argument("--skew", type=float, default=0.0,
                   help="0: spread evenly; s > 0: zipf-like, table r gets weight 1/(r+1)^s")
    w.add_argument("--own-names", action="store_true",
                   help="with --tables > 1, every table its own column names (one more column each), as a "
                        "company's tables have; without it every table has the same names")
    w.add_argument("--no-reference", action="store_true",
                   help="with --tables > 1, skip the one-table run of the same workload that it is compared with")
    k = p.add_argument_group("the writer")
    k.add_argument("-p", "--partitions", type=int, default=6)
    k.add_argument("--batch", type=int, default=5000, help="pipeline.batch_max_messages")
    k.add_argument("--connections", type=int, default=4, help="max_connections of the destination")
    k.add_argument("--writers", type=int, default=1, help="writer processes in one consumer group")
    m = p.add_argument_group("what to measure")
    m.add_argument("--runs", type=int, default=3, help="repeat each measurement; the report gives medians")
    m.add_argument("--live", action="store_true",
                   help="also the clock from first publish (writer already running), beside the pre-filled one")
    m.add_argument("--ceiling-connections", type=int, default=2,
                   help="connections of the COPY ceiling measured in each run (0: no ceiling)")
    m.add_argument("--peer", action="store_true", help="also Kafka Connect + the Debezium JDBC sink, same data")
    m.add_argument("--latency", action="store_true", help="also record -> row latency at a steady rate")
    m.add_argument("--rate", type=int, default=1000, help="latency: packets per second")
    m.add_argument("--duration", type=float, default=30.0, help="latency: seconds of publishing")
    m.add_argument("--baselines", action="store_true", help="also the seed's naive writer (one INSERT per packet)")
    m.add_argument("--seed-packets", type=int, default=20_000, help="packets for the (slow) naive seed writer")
    m.add_argument("--sweep", action="store_true",
                   help="also vary partitions, batch size, connections and writer processes (inserts, 250 B)")
    m.add_argument("--sweep-packets", type=int, default=200_000)
    m.add_argument("--all", action="store_true",
                   help="every workload, the peer, latency, baselines and the sweep (what make bench runs)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write every run and the medians as JSON")
    o.add_argument("--plot", metavar="FILE", help="PNG of the workloads and the sweep (needs the bench extra)")
    o.add_argument("--profile", metavar="FILE",
                   help="py-spy raw profile of the writer during one pre-filled run of the workload (needs py-spy)")
    o.add_argument("--keep-logs", metavar="DIR", help="keep writer configs and logs here (default: a temp dir)")
