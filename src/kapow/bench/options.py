"""The ``kapow bench`` options, apart from the harness so that building the CLI parser imports nothing heavy."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--packets", type=int, default=300_000, help="packets per throughput run")
    p.add_argument("--preset", action="append", choices=("250b", "12b"),
                   help="packet size: 250b (~250-byte value, default) or 12b (~12 bytes of data); repeatable")
    p.add_argument("-p", "--partitions", type=int, default=6)
    p.add_argument("--batch", type=int, default=5000, help="pipeline.batch_max_messages")
    p.add_argument("--connections", type=int, default=4, help="max_connections of the destination")
    p.add_argument("--writers", type=int, default=1, help="writer processes in one consumer group")
    p.add_argument("--runs", type=int, default=3, help="repeat each measurement; the report gives medians")
    p.add_argument("--no-live", action="store_true", help="skip the run that publishes while the writer runs")
    p.add_argument("--no-prefilled", action="store_true", help="skip the run that lands a pre-filled topic")
    p.add_argument("--latency", action="store_true", help="also measure end-to-end latency at a steady rate")
    p.add_argument("--rate", type=int, default=1000, help="latency mode: packets per second")
    p.add_argument("--duration", type=float, default=30.0, help="latency mode: seconds of publishing")
    p.add_argument("--peer", action="store_true", help="also run Kafka Connect + Debezium JDBC sink (250b)")
    p.add_argument("--baselines", action="store_true",
                   help="also run the seed's naive writer and the database's COPY ceiling")
    p.add_argument("--seed-packets", type=int, default=20_000, help="packets for the (slow) naive seed writer")
    p.add_argument("--sweep", action="store_true",
                   help="also vary partitions, batch size, connections and writer processes (pre-filled, 250b)")
    p.add_argument("--sweep-packets", type=int, default=200_000)
    p.add_argument("--all", action="store_true", help="everything above (what make bench runs)")
    p.add_argument("--json", metavar="FILE", help="write every run and the medians as JSON")
    p.add_argument("--plot", metavar="FILE", help="PNG of the sweep (needs the bench extra: matplotlib)")
    p.add_argument("--profile", metavar="FILE",
                   help="py-spy raw profile of the writer during one pre-filled 250b run (needs py-spy)")
    p.add_argument("--keep-logs", metavar="DIR", help="keep writer configs and logs here (default: a temp dir)")
