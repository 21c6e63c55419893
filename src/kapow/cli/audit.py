"""``kapow audit``: did everything land? Every record of the input topics, accounted for (docs/OPERATIONS.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kapow.cli.dlq import emit
from kapow.cli.progress import progress_bar

_CATEGORIES = ("landed (every destination holds its row as its mode implies), filtered (not a KaPoW packet), "
               "user_errors (on the user-errors topic), parked (on the dead-letter queue), purged (dropped from it "
               "by an operator), pending (at or past the group's committed offset) or missing (none of these)")


def register(sub: Any) -> None:
    cmd = sub.add_parser("audit", help="account for every record of the input topics; exit 1 if any is missing",
                         description=f"Sort every record of the input topics into exactly one of: {_CATEGORIES}. "
                                     "Exit status 1 when missing > 0.")
    cmd.add_argument("-c", "--config", required=True, help="TOML config file (topics, group, destinations)")
    cmd.add_argument("--topic", help="audit this topic only (default: every topic of the config)")
    cmd.add_argument("--since", help="only records published at or after (ISO 8601, or 15m / 2h / 1d ago)")
    cmd.add_argument("--from-offsets", metavar="P:O,...", help="start each named partition at this offset (one "
                                                               "topic; the others from their start; with --since, "
                                                               "the later of the two)")
    cmd.add_argument("--json", action="store_true", help="print one JSON object")
    cmd.add_argument("--examples", type=int, default=10, help="missing records to show (default 10)")
    cmd.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from kapow.audit import audit, parse_offsets
    from kapow.config import load_config
    from kapow.deadletter.records import parse_time
    from kapow.errors import KapowError

    config = load_config(args.config)
    if args.topic and args.topic not in config.consumed_topics:
        raise KapowError(f"--topic {args.topic}: not one of the config's topics ({', '.join(config.consumed_topics)})")
    if not 0 <= args.examples <= 1000:
        raise KapowError("--examples: expected 0 to 1000")
    since = parse_time(args.since) if args.since else None
    offsets = parse_offsets(args.from_offsets) if args.from_offsets else None
    bar = progress_bar("reading")
    report = audit(config, topic=args.topic, since_ms=since, from_offsets=offsets, progress=bar,
                   examples=args.examples)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr)
    if args.json:
        emit(report.to_json())
    else:
        print(report.table())
        verdict = "everything is accounted for" if report.ok else f"{report.missing} MISSING"
        print(f"\n{report.total} records in {report.elapsed_s:.1f} s (group {report.group}): {verdict}")
        if report.unverified:
            print(f"{report.unverified} landed record(s) are unverified: no unique key of theirs could be checked, or"
                  " the last operation on it may rightly have done nothing (a version guard, another key's insert;"
                  " docs/OPERATIONS.md, Keys)")
        for m in report.missing_examples:
            print(f"  missing {m.topic}[{m.partition}]@{m.offset}: {m.why}")
    return 0 if report.ok else 1
