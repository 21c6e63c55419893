"""``kapow demo``: what ``make demo`` runs once the services are up (see :mod:`kapow.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="land a sample stream in a demo table and show it happening")
    demo.add_argument("-c", "--config", type=Path,
                      help="TOML config (default: examples/kapow.toml of this checkout, wherever you run it from);"
                           " KAPOW_BOOTSTRAP or KAPOW_KAFKA_PORT, KAPOW_PG_HOST and KAPOW_PG_PORT override its"
                           " addresses")
    demo.add_argument("-n", "--packets", type=int, default=20000)
    demo.add_argument("--rate", type=int, default=2000, help="packets per second to publish")
    demo.add_argument("--no-wait", action="store_true",
                      help="stop the writer once every packet is accounted for (default: run until Ctrl+C)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from kapow.demo import run_demo

    if args.packets < 1 or args.rate < 1:
        from kapow.errors import KapowError

        raise KapowError("demo: --packets and --rate must be at least 1")
    return run_demo(packets=args.packets, rate=args.rate, config_path=args.config, linger=not args.no_wait)
