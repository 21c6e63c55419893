"""``kapow errors list``: the most recent user errors, newest first, as the console shows them (read-only).

User errors are the clients' callback topic: they fix and republish. Operators look; nothing here changes the
topic. The read is bounded like the console's: the last 200 records of each partition, values cut at 16 KiB, keys and
each header at 1 KiB, headers in all at 16 KiB.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kapow.cli.dlq import add_target_arguments, emit, target
from kapow.errors import KapowError

PER_PARTITION = 200
VALUE_BYTES = 16 * 1024


def register(sub: Any) -> None:
    errors = sub.add_parser("errors", help="look at recent user errors (read-only)")
    esub = errors.add_subparsers(title="errors commands", required=True)
    cmd = esub.add_parser("list", help="the newest user errors, newest first",
                          description=f"The newest user errors, newest first (the last {PER_PARTITION} of each "
                                      "partition are read; values cut at 16 KiB, keys and headers too).")
    add_target_arguments(cmd, "user-errors topic (default: from the config, else kapow.errors.user)")
    cmd.add_argument("--code", help="only this error code")
    cmd.add_argument("--limit", type=int, default=20, help=f"at most this many (default 20, up to {PER_PARTITION})")
    cmd.add_argument("--json", action="store_true", help="JSON lines, one record each (as GET /api/user-errors)")
    cmd.set_defaults(func=cmd_errors_list)


def cmd_errors_list(args: argparse.Namespace) -> int:
    from kapow.deadletter.recent import recent_records

    if not 1 <= args.limit <= PER_PARTITION:
        raise KapowError(f"--limit: expected 1 to {PER_PARTITION}")
    where = target(args)
    topic = args.topic or where.user_errors
    records = recent_records(where.bootstrap, topic, settings=where.settings, per_partition=PER_PARTITION,
                             keep_bytes=VALUE_BYTES)
    matching = [t for t in records if args.code is None or t.record.code == args.code]
    for t in matching[:args.limit]:
        r = t.record
        if args.json:
            emit(r.to_json() | t.cut_json())
        else:
            print(f"{r.id:>10}  {r.to_json()['failed_at']}  {r.code:<22} {r.label or '-':<40} "
                  f"{r.source_topic}[{r.source_partition}]@{r.source_offset}  {r.message[:100]}")
    print(f"{min(len(matching), args.limit)} of {len(matching)} recent user error(s) on {topic}, newest first",
          file=sys.stderr)
    return 0
