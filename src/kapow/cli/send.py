"""``kapow send``: publish JSON lines as packets (a whole packet, or ``{"destinations": [...], "data": {...}}``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from kapow.errors import KapowError


def register(sub: Any) -> None:
    send = sub.add_parser("send", help="publish packets from JSON lines (stdin or a file)")
    send.add_argument("-b", "--bootstrap", default=os.environ.get("KAPOW_BOOTSTRAP", "127.0.0.1:9092"))
    send.add_argument("-t", "--topic", required=True)
    send.add_argument("-f", "--file", help="JSON lines file (default: stdin)")
    send.add_argument("--no-header", action="store_true", help="publish without the context header")
    send.set_defaults(func=cmd_send)


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
