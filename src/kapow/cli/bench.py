"""``kapow bench``: the benchmark (``make bench``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measure throughput, latency, the peer and the baselines (make bench)")
    from kapow.bench.options import add_arguments

    add_arguments(bench)
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from kapow.bench.harness import main_bench

    return main_bench(args)
