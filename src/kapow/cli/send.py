"""``kapow send``: publish JSON lines as packets (a whole packet, or ``{"destinations": [...], "data": {...}}``).

Every bad line gets one line ``kapow send: line N: <reason>`` on stderr and the other lines are still sent: not
JSON, JSON that is no object (an array, a string), a wrapped line without ``data`` or with a destination field
that is not a string, a line larger than Kafka takes (read at most :data:`MAX_LINE_BYTES` into memory, the rest
skipped), a record the broker refuses. Before the first line, the broker must answer within
:data:`BROKER_WAIT_S`, else one line names the address. The exit status says whether every line was sent and
acknowledged (0) or not (1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec
from confluent_kafka import KafkaError, KafkaException

from kapow.contract import Destination
from kapow.errors import KapowError

# librdkafka's default message.max.bytes (the client refuses larger records before the broker sees them): a line
# longer than this cannot be sent, so no more of it is held in memory.
MAX_LINE_BYTES = 1_000_000
BROKER_WAIT_S = 10.0
_REPORT_LIMIT = 1000  # bad lines reported one by one; past that, only counted


def register(sub: Any) -> None:
    send = sub.add_parser("send", help="publish packets from JSON lines (stdin or a file)")
    send.add_argument("-b", "--bootstrap",
                      help="broker (default: the config's, else $KAPOW_BOOTSTRAP, else 127.0.0.1:9092)")
    send.add_argument("-c", "--config", help="TOML config: its broker and [kafka] security settings (SASL, TLS)")
    send.add_argument("-t", "--topic", required=True)
    send.add_argument("-f", "--file", help="JSON lines file (default: stdin)")
    send.add_argument("--no-header", action="store_true", help="publish without the context header")
    send.set_defaults(func=cmd_send)


class _TooLong(Exception):
    """A line longer than MAX_LINE_BYTES (its size so far is the message)."""


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes | _TooLong]]:
    """(line number, stripped line) for each non-blank line; an over-long line is skipped to its end."""
    n = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            size = len(line)
            while line and not line.endswith(b"\n"):  # the rest of it, a bounded piece at a time
                line = stream.readline(MAX_LINE_BYTES)
                size += len(line)
            yield n, _TooLong(f"{size:,} bytes, more than the {MAX_LINE_BYTES:,} Kafka takes: not sent")
            continue
        line = line.strip()
        if line:
            yield n, line


class _Wrapped(msgspec.Struct):
    destinations: msgspec.Raw
    data: msgspec.Raw


def _packet(line: bytes) -> bytes:
    """The record value for one line; ValueError with the reason for a bad one.

    A whole packet (``pipeline_context``) is sent as it is: the writer judges it, and a client may want to see
    what a bad one becomes. A wrapped line is ours to build, so it is checked: ``destinations`` a list of objects
    as the writer reads them (names are strings, ``mode`` one of insert/upsert/delete, ``key`` a list of columns,
    ``metadata`` an object), and ``data`` present.
    """
    try:
        obj: Any = msgspec.json.decode(line)
    except msgspec.DecodeError:
        raise ValueError("not JSON: not sent") from None
    if not isinstance(obj, dict):  # JSON, but no packet of either form: refused here, as a line not JSON is
        raise ValueError(f"a line is a JSON object (a packet, or {{\"destinations\": [...], \"data\": {{...}}}}), "
                         f"not {type(obj).__name__ if obj is not None else 'null'}: not sent")
    if "pipeline_context" in obj or "destinations" not in obj:
        return line
    destinations = obj["destinations"]
    if not isinstance(destinations, list):
        raise ValueError("wrapped line: destinations must be a list of objects: not sent")
    for i, dest in enumerate(destinations):
        if not isinstance(dest, dict):
            raise ValueError(f"wrapped line: destinations[{i}] must be an object: not sent")
        try:  # the writer's own shape of a destination: names are strings, "key" a list, "metadata" an object
            msgspec.convert(dest, type=Destination)
        except msgspec.ValidationError as exc:
            reason, _, where = str(exc).partition(" - at `$")
            field = where.rstrip("`").lstrip(".")
            raise ValueError(f"wrapped line: destinations[{i}]{'.' + field if field else ''}: "
                             f"{reason[:1].lower()}{reason[1:200]}: not sent") from None
    if "data" not in obj:
        raise ValueError('wrapped line: no "data" (a wrapped line is {"destinations": [...], "data": {...}}): '
                         "not sent")
    raw = msgspec.json.decode(line, type=_Wrapped)  # data byte for byte, as the client wrote it
    return b'{"pipeline_context":{"destinations":%b},"data":%b}' % (bytes(raw.destinations), bytes(raw.data))


def cmd_send(args: argparse.Namespace) -> int:
    if args.file and not Path(args.file).is_file():
        raise KapowError(f"{args.file}: no such file")
    from kapow.kafka.connectivity import BrokerUnreachable, wait_for_broker

    settings: dict[str, str | int | float | bool] = {}
    if args.config:
        from kapow.config import load_config

        kafka = load_config(args.config).kafka
        args.bootstrap = args.bootstrap or kafka.bootstrap_servers
        settings = dict(kafka.settings)
    args.bootstrap = args.bootstrap or os.environ.get("KAPOW_BOOTSTRAP", "127.0.0.1:9092")
    args.settings = settings
    try:
        wait_for_broker(args.bootstrap, settings, give_up_s=BROKER_WAIT_S)
    except BrokerUnreachable as exc:
        raise KapowError(f"send: {exc}") from None
    stream: IO[bytes] = Path(args.file).open("rb") if args.file else sys.stdin.buffer  # noqa: SIM115 - closed below
    try:
        return _send_all(args, stream)
    finally:
        if args.file:
            stream.close()


def _send_all(args: argparse.Namespace, stream: IO[bytes]) -> int:
    from kapow.client import DeliveryError, Publisher

    bad = refused_by_broker = 0

    def report(n: int, reason: str) -> None:
        nonlocal bad
        bad += 1
        if bad <= _REPORT_LIMIT:
            print(f"kapow send: line {n}: {reason}", file=sys.stderr)

    def refused(n: int) -> Callable[[KafkaError], None]:
        def on_error(err: KafkaError) -> None:
            nonlocal refused_by_broker
            refused_by_broker += 1
            report(n, f"refused by Kafka at {args.bootstrap}: {err.str()}")
        return on_error

    last = time.monotonic()
    show = sys.stderr.isatty()
    pub = Publisher(args.bootstrap, args.topic, settings=args.settings)
    try:
        for n, line in _lines(stream):
            if isinstance(line, _TooLong):
                report(n, str(line))
                continue
            try:
                pub.send_raw(_packet(line), pipeline=not args.no_header, on_error=refused(n))
            except ValueError as exc:
                report(n, str(exc))
            except KafkaException as exc:  # refused by the client before sending (e.g. over message.max.bytes)
                err: KafkaError = exc.args[0]
                report(n, f"{len(line):,} bytes, refused: {err.str()}: not sent")
            if show and time.monotonic() - last > 1:
                print(f"\rsent {pub.sent}", end="", file=sys.stderr)
                last = time.monotonic()
    finally:
        try:
            pub.close()
        except DeliveryError:
            pass  # each refused line is reported above; the unacknowledged ones below
    unacknowledged = pub.sent - pub.acked - refused_by_broker
    if show:
        print("\r", end="", file=sys.stderr)
    if bad > _REPORT_LIMIT:
        print(f"kapow send: {bad - _REPORT_LIMIT} more bad line(s) not shown", file=sys.stderr)
    if unacknowledged:
        print(f"kapow send: {unacknowledged} packet(s) not acknowledged by Kafka at {args.bootstrap} within "
              f"{pub.flush_timeout:.0f} s", file=sys.stderr)
    print(f"sent {pub.acked} packets to {args.topic}" + (f" ({bad} lines not sent)" if bad else ""),
          file=sys.stderr)
    return 1 if bad or unacknowledged else 0
