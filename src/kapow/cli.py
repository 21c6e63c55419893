"""The ``kapow`` command: ``run``, ``send``, ``check``, ``demo`` (and more as they come).

Every error a user can cause ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import msgspec

from kapow import __version__
from kapow.errors import ConfigError, KapowError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"kapow: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KapowError as exc:
        print(f"kapow: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kapow", description="KaPoW, the Kafka -> PostgreSQL Writer")
    p.add_argument("--version", action="version", version=f"kapow {__version__}")
    sub = p.add_subparsers(title="commands")

    run = sub.add_parser("run", help="run the writer (consume, land, commit) until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, help="TOML config file")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="check a config, the broker and every destination database")
    check.add_argument("-c", "--config", required=True, help="TOML config file")
    check.set_defaults(func=cmd_check)

    send = sub.add_parser("send", help="publish packets from JSON lines (stdin or a file)")
    send.add_argument("-b", "--bootstrap", default=os.environ.get("KAPOW_BOOTSTRAP", "127.0.0.1:9092"))
    send.add_argument("-t", "--topic", required=True)
    send.add_argument("-f", "--file", help="JSON lines file (default: stdin)")
    send.add_argument("--no-header", action="store_true", help="publish without the context header")
    send.set_defaults(func=cmd_send)

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

    bench = sub.add_parser("bench", help="measure throughput, latency, the peer and the baselines (make bench)")
    from kapow.bench.options import add_arguments as bench_arguments

    bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", help="land a sample stream in a demo table and show it happening")
    demo.add_argument("-n", "--packets", type=int, default=20000)
    demo.add_argument("--rate", type=int, default=2000, help="packets per second to publish")
    demo.set_defaults(func=cmd_demo)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from kapow.config import load_config
    from kapow.logs import setup_logging

    config = load_config(args.config)
    setup_logging(config.log.level, config.log.format)
    from confluent_kafka import KafkaException

    from kapow.pipeline.runner import Writer

    writer = Writer(config)
    http = None
    if config.http.enabled:  # metrics, health, DLQ API and console, on a thread beside the loop
        from kapow.http.server import HttpServer, admin_token

        http = HttpServer(config, writer, token=admin_token())
        http.start()
    writer.install_signals()
    try:
        drained = writer.run()
    except KafkaException as exc:
        raise KapowError(f"Kafka: {exc.args[0] if exc.args else exc}") from None
    finally:
        if http is not None:
            http.stop()
    logging.shutdown()
    if not drained:  # worker threads may still wait on a database: do not let them hold the exit
        os._exit(0)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from kapow.config import load_config
    from kapow.health import check_config

    config = load_config(args.config)
    ok = True
    for line, good in check_config(config):
        print(("ok    " if good else "FAIL  ") + line)
        ok = ok and good
    return 0 if ok else 1


def _lines(path: str | None) -> Iterator[tuple[int, bytes]]:
    stream: IO[bytes]
    stream = Path(path).open("rb") if path else sys.stdin.buffer  # noqa: SIM115 - closed below
    try:
        for n, line in enumerate(stream, 1):
            line = line.strip()
            if line:
                yield n, line
    finally:
        if path:
            stream.close()


class _Wrapped(msgspec.Struct):
    destinations: list[dict[str, str]]
    data: msgspec.Raw


def cmd_send(args: argparse.Namespace) -> int:
    from kapow.client import DeliveryError, Publisher

    if args.file and not Path(args.file).is_file():
        raise KapowError(f"{args.file}: no such file")
    bad = 0
    last = time.monotonic()
    show = sys.stderr.isatty()
    with Publisher(args.bootstrap, args.topic) as pub:
        for n, line in _lines(args.file):
            value = line
            try:
                obj: Any = msgspec.json.decode(line)
            except msgspec.DecodeError:
                print(f"kapow send: line {n}: not JSON, skipped", file=sys.stderr)
                bad += 1
                continue
            if isinstance(obj, dict) and "pipeline_context" not in obj and "destinations" in obj:
                wrapped = msgspec.json.decode(line, type=_Wrapped)
                value = b'{"pipeline_context":{"destinations":%b},"data":%b}' % (
                    msgspec.json.encode(wrapped.destinations), bytes(wrapped.data))
            pub.send_raw(value, pipeline=not args.no_header)
            if show and time.monotonic() - last > 1:
                print(f"\rsent {pub.sent}", end="", file=sys.stderr)
                last = time.monotonic()
        try:
            pub.flush()
        except DeliveryError as exc:
            raise KapowError(str(exc)) from None
    if show:
        print("\r", end="", file=sys.stderr)
    print(f"sent {pub.sent} packets to {args.topic}" + (f" ({bad} lines skipped)" if bad else ""), file=sys.stderr)
    return 1 if bad else 0


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
            progress = _progress(verb)
            n = queue.reschedule(records, progress) if args.action == "reschedule" else queue.purge(records, progress)
            print(f"\r{verb} {n} record(s) on {topic}", file=sys.stderr)
    finally:
        queue.close()
    return 0


def _progress(verb: str) -> Callable[[int, int], None]:
    show = sys.stderr.isatty()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if show and (now - last[0] > 0.2 or done == total):
            width = 30
            filled = width * done // max(total, 1)
            print(f"\r{verb} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)
            last[0] = now

    return progress


def cmd_bench(args: argparse.Namespace) -> int:
    from kapow.bench.harness import main_bench

    return main_bench(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from kapow.demo import run_demo

    return run_demo(packets=args.packets, rate=args.rate)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
