"""``kapow dlq list|show|reschedule|purge``: the system-errors dead-letter queue."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import msgspec

from kapow.cli.progress import progress_bar
from kapow.errors import KapowError


def register(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="view, reschedule and purge the system-errors dead-letter queue")
    dsub = dlq.add_subparsers(title="dlq commands", required=True)
    for name, helptext in (("list", "list parked records (newest last)"), ("show", "show records in full"),
                           ("reschedule", "republish records to their source topic"),
                           ("purge", "drop records from the queue")):
        cmd = dsub.add_parser(name, help=helptext)
        cmd.add_argument("ids", nargs="*", help="record ids (partition:offset), as listed")
        cmd.add_argument("-c", "--config", help="TOML config (for the broker and the topic)")
        cmd.add_argument("-b", "--bootstrap", help="broker (default: from the config, else 127.0.0.1:9092)")
        cmd.add_argument("--topic", help="system-errors topic (default: from the config)")
        cmd.add_argument("--code", help="only records with this error code")
        cmd.add_argument("--destination", help="only records whose vanity/database/schema.table contains this")
        cmd.add_argument("--since", help="failed at or after (ISO 8601, or 15m / 2h / 1d ago)")
        cmd.add_argument("--until", help="failed at or before (ISO 8601, or 15m / 2h / 1d ago)")
        cmd.add_argument("--json", action="store_true", help="JSON lines output")
        if name in ("reschedule", "purge"):
            cmd.add_argument("--all", action="store_true", help="every parked record (no ids or filter needed)")
        cmd.set_defaults(func=cmd_dlq, action=name)


def cmd_dlq(args: argparse.Namespace) -> int:
    from kapow.deadletter.queue import DeadLetterQueue, DlqFilter, parse_time

    bootstrap, topic, settings = args.bootstrap, args.topic, None
    if args.config:
        from kapow.config import load_config

        config = load_config(args.config)
        bootstrap = bootstrap or config.kafka.bootstrap_servers
        topic = topic or config.kafka.system_errors_topic
        settings = config.kafka.settings
    bootstrap = bootstrap or os.environ.get("KAPOW_BOOTSTRAP", "127.0.0.1:9092")
    topic = topic or "kapow.errors.system"
    flt = DlqFilter(
        ids=frozenset(args.ids) if args.ids else None, code=args.code, destination=args.destination,
        since_ms=parse_time(args.since) if args.since else None,
        until_ms=parse_time(args.until) if args.until else None,
    )
    mutating = args.action in ("reschedule", "purge")
    if mutating and not (args.ids or args.code or args.destination or args.since or args.until or args.all):
        raise KapowError(f"dlq {args.action}: name record ids, a filter (--code, --destination, --since, --until),"
                         " or --all")
    queue = DeadLetterQueue(bootstrap, topic, settings=settings)
    try:
        records = queue.records(flt)
        if args.ids:
            missing = set(args.ids) - {r.id for r in records}
            if missing:
                raise KapowError(f"no parked record with id {', '.join(sorted(missing))} on {topic}")
        if args.action == "list":
            for r in records:
                if args.json:
                    print(msgspec.json.encode(r.to_json(with_value=False)).decode())
                else:
                    d = r.destination or {}
                    where = f"{d.get('vanity', '-')}/{d.get('database', '-')}/{d.get('table', '-')}"
                    print(f"{r.id:>10}  {r.to_json()['failed_at']}  {r.code:<22} {where:<40} "
                          f"{r.source_topic}[{r.source_partition}]@{r.source_offset}  attempt {r.attempt}  "
                          f"{r.message[:80]}")
            print(f"{len(records)} parked record(s) on {topic}", file=sys.stderr)
        elif args.action == "show":
            for r in records:
                print(msgspec.json.format(msgspec.json.encode(r.to_json()), indent=2).decode())
        else:
            verb = "rescheduled" if args.action == "reschedule" else "purged"
            progress = progress_bar(verb)
            n = queue.reschedule(records, progress) if args.action == "reschedule" else queue.purge(records, progress)
            print(f"\r{verb} {n} record(s) on {topic}", file=sys.stderr)
    finally:
        queue.close()
    return 0
