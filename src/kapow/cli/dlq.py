"""``kapow dlq list|show|stats|reschedule|purge``: the system-errors dead-letter queue.

Oldest first everywhere (by failure time, then partition and offset), as the HTTP API lists it; the destination
is always ``vanity/database/schema.table``, as ``--destination`` matches it; ``--json`` prints JSON lines. Every
command streams the queue, so a million parked records are listed a page at a time and rescheduled or purged in
bounded memory, one Kafka transaction per chunk: an interrupted run is simply started again.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from kapow.cli.progress import progress_bar
from kapow.errors import KapowError

if TYPE_CHECKING:
    from kapow.deadletter.queue import DeadLetterQueue
    from kapow.deadletter.records import DlqFilter

ORDER = "oldest first (by failure time, then partition and offset)"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command reads: the broker, its client settings and the topics (from -c, -b, --topic)."""

    bootstrap: str
    settings: dict[str, Any]
    system_errors: str
    user_errors: str


def add_target_arguments(cmd: argparse.ArgumentParser, topic_help: str) -> None:
    cmd.add_argument("-c", "--config", help="TOML config (for the broker and the topic)")
    cmd.add_argument("-b", "--bootstrap", help="broker (default: from the config, else $KAPOW_BOOTSTRAP or "
                                               "127.0.0.1:9092)")
    cmd.add_argument("--topic", help=topic_help)


def target(args: argparse.Namespace) -> Target:
    bootstrap, settings = args.bootstrap, {}
    system, user = "kapow.errors.system", "kapow.errors.user"
    if args.config:
        from kapow.config import load_config

        config = load_config(args.config)
        bootstrap = bootstrap or config.kafka.bootstrap_servers
        settings = dict(config.kafka.settings)
        system, user = config.kafka.system_errors_topic, config.kafka.user_errors_topic
    bootstrap = bootstrap or os.environ.get("KAPOW_BOOTSTRAP", "127.0.0.1:9092")
    return Target(bootstrap, settings, system, user)


def emit(obj: Any) -> None:
    """One JSON line on stdout."""
    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")


def register(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="list, show, summarise, reschedule and purge the system-errors dead-letter "
                                     "queue", description=f"The parked records, {ORDER}; --json prints JSON lines.")
    dsub = dlq.add_subparsers(title="dlq commands", required=True)
    commands = (("list", f"list parked records, {ORDER}, a page at a time"),
                ("show", "show records in full (key, value, headers)"),
                ("stats", "count parked records by error code and destination"),
                ("reschedule", "republish records to their source topic (resumable; never twice)"),
                ("purge", "drop records from the queue"))
    for name, helptext in commands:
        cmd = dsub.add_parser(name, help=helptext, description=helptext)
        add_target_arguments(cmd, "system-errors topic (default: from the config, else kapow.errors.system)")
        if name != "stats":
            cmd.add_argument("ids", nargs="*", help="record ids (partition:offset), as listed")
            cmd.add_argument("--code", help="only records with this error code")
            cmd.add_argument("--destination", help="only this destination: a label as listed "
                                                    "(vanity/database/schema.table) selects exactly it, "
                                                    "vanity/database/ a database, vanity/ a vanity")
            cmd.add_argument("--since", help="failed at or after (ISO 8601, or 15m / 2h / 1d ago)")
            cmd.add_argument("--until", help="failed at or before (ISO 8601, or 15m / 2h / 1d ago)")
        cmd.add_argument("--json", action="store_true", help="JSON lines on stdout")
        if name == "list":
            cmd.add_argument("--limit", type=int, default=0, help="at most this many (a page; default 0: all, "
                                                                  "streamed)")
            cmd.add_argument("--after", metavar="ID", help="start after this record (the last id of a page)")
        if name in ("reschedule", "purge"):
            cmd.add_argument("--all", action="store_true", help="every parked record (no ids or filter needed)")
            cmd.add_argument("--chunk", type=int, default=500, help="records per Kafka transaction (default 500)")
        cmd.set_defaults(func=cmd_dlq, action=name)


def cmd_dlq(args: argparse.Namespace) -> int:
    from confluent_kafka import KafkaException

    from kapow.deadletter.queue import DeadLetterQueue

    where = target(args)
    topic = args.topic or where.system_errors
    queue = DeadLetterQueue(where.bootstrap, topic, settings=where.settings)
    try:
        if args.topic and not queue.exists():  # a mistyped --topic must not read as an empty queue
            raise KapowError(f"topic {topic} does not exist on {where.bootstrap} (without --topic: "
                             f"{where.system_errors})")
        if args.action == "stats":
            return _stats(queue, args)
        flt = _filter(args)
        if args.action == "list":
            return _list(queue, flt, args)
        if args.action == "show":
            return _show(queue, flt, args)
        return _move(queue, flt, args)
    except KafkaException as exc:
        raise KapowError(f"Kafka {where.bootstrap}: {exc.args[0].str() if exc.args else exc}") from None


def _filter(args: argparse.Namespace) -> DlqFilter:
    from kapow.deadletter.records import DlqFilter, parse_time

    bad = [i for i in args.ids if not _is_id(i)]
    if bad:
        raise KapowError(f"{bad[0]!r} is not a record id (partition:offset, as listed)")
    return DlqFilter(ids=frozenset(args.ids) if args.ids else None, code=args.code, destination=args.destination,
                     since_ms=parse_time(args.since) if args.since else None,
                     until_ms=parse_time(args.until) if args.until else None)


def _is_id(text: str) -> bool:
    part, sep, off = text.partition(":")
    return bool(sep) and part.isdigit() and off.isdigit()


def _list(queue: DeadLetterQueue, flt: DlqFilter, args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise KapowError("--limit: expected 0 (all) or more")
    if args.after is not None and not _is_id(args.after):
        raise KapowError(f"--after {args.after!r}: expected a record id (partition:offset, as listed)")
    shown = 0
    last = None
    for r in queue.scan(flt, after=args.after):
        if args.limit and shown >= args.limit:
            print(f"{shown} parked record(s) shown from {queue.topic}, {ORDER}; next page: --after {last}",
                  file=sys.stderr)
            return 0
        if args.json:
            emit(r.to_json(with_value=False))
        else:
            print(f"{r.id:>10}  {r.to_json()['failed_at']}  {r.code:<22} {r.label or '-':<40} "
                  f"{r.source_topic}[{r.source_partition}]@{r.source_offset}  attempt {r.attempt}  {r.message[:80]}")
        shown += 1
        last = r.id
    print(f"{shown} parked record(s) on {queue.topic}{' after ' + args.after if args.after else ''}, {ORDER}",
          file=sys.stderr)
    return 0


def _show(queue: DeadLetterQueue, flt: DlqFilter, args: argparse.Namespace) -> int:
    if flt.empty:
        raise KapowError("dlq show: name record ids or a filter (--code, --destination, --since, --until)")
    shown = set()
    for r in queue.scan(flt):
        shown.add(r.id)
        if args.json:
            emit(r.to_json())
        else:
            print(msgspec.json.format(msgspec.json.encode(r.to_json()), indent=2).decode())
    missing = sorted(set(args.ids) - shown)
    if missing:
        raise KapowError(f"no parked record with id {', '.join(missing[:10])} on {queue.topic}")
    return 0


def _stats(queue: DeadLetterQueue, args: argparse.Namespace) -> int:
    from kapow.deadletter.records import iso

    summary = queue.summary()
    rows = sorted(summary.pairs.items(), key=lambda kv: (-kv[1][0], kv[0]))
    if args.json:
        for (code, where), (count, oldest, newest) in rows:
            emit({"code": code, "destination": where, "count": count, "oldest_failed_at": iso(oldest),
                  "newest_failed_at": iso(newest)})
        return 0
    print(f"{summary.parked} parked record(s) on {queue.topic}")
    if rows:
        print(f"{'count':>9}  {'code':<22} {'destination':<44} oldest -> newest failure")
        for (code, where), (count, oldest, newest) in rows:
            print(f"{count:>9}  {code:<22} {where:<44} {iso(oldest)} -> {iso(newest)}")
    return 0


def _move(queue: DeadLetterQueue, flt: DlqFilter, args: argparse.Namespace) -> int:
    from kapow.deadletter.mover import Verb

    verb = Verb(args.action)
    if flt.empty and not args.all:
        raise KapowError(f"dlq {args.action}: name record ids, a filter (--code, --destination, --since, --until),"
                         " or --all")
    if args.chunk < 1:
        raise KapowError("--chunk: expected at least 1")
    if args.ids:
        queue.check_ids(args.ids, verb=verb)
    outcome = queue.move(verb, flt, progress_bar("reading"), chunk_records=args.chunk)
    if sys.stderr.isatty():
        print("\r", end="", file=sys.stderr)
    if args.json:
        emit({**outcome.to_json(), "topic": queue.topic})
    else:
        print(f"{verb.done} {outcome.count} record(s) on {queue.topic}", file=sys.stderr)
    if outcome.skipped:
        print(f"kapow: skipped {len(outcome.skipped)} record(s) that cannot be rescheduled (no kapow-source-topic, "
              f"or a cut value; purge them instead): {', '.join(outcome.skipped[:5])}", file=sys.stderr)
    return 0
