"""``kapow check``: the config, the broker and every destination database, one line each."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    check = sub.add_parser("check", help="check a config, the broker and every destination database")
    check.add_argument("-c", "--config", required=True, help="TOML config file")
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from kapow.config import load_config
    from kapow.health import check_config

    config = load_config(args.config)
    ok = True
    for line, good in check_config(config):
        print(("ok    " if good else "FAIL  ") + line)
        ok = ok and good
    return 0 if ok else 1
