"""``kapow demo``: what ``make demo`` runs once the services are up."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="land a sample stream in a demo table and show it happening")
    demo.add_argument("-n", "--packets", type=int, default=20000)
    demo.add_argument("--rate", type=int, default=2000, help="packets per second to publish")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from kapow.demo import run_demo

    return run_demo(packets=args.packets, rate=args.rate)
