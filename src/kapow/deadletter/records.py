"""Error records as operators see them: a parked or failed packet with its ``kapow-*`` headers decoded.

Decoding is lenient on purpose: an error record may come from an older or newer KaPoW (unknown ``kapow-*``
headers, a destination with more fields, such as ``mode`` or ``key``) or from a hand-made tool (headers with null
values, numbers that are not numbers). Whatever it carries, it decodes, and what is missing reads as ``-1``/``?``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import Message

from kapow.contract import destination_label
from kapow.deadletter.publisher import (
    H_ATTEMPT,
    H_CLASS,
    H_CODE,
    H_DESTINATION,
    H_FAILED_AT,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_TIMESTAMP,
    H_TOPIC,
    HEADER_PREFIX,
)
from kapow.errors import KapowError

H_ORIGIN = "kapow-origin"  # topic/partition/offset of the original source record (set on every republished copy)
H_VALUE_TRUNCATED = "kapow-value-truncated"  # the original value's size, when it was cut to fit the error topic


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One error record, with its metadata decoded from the ``kapow-*`` headers."""

    id: str  # "partition:offset" on its error topic
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    code: str
    error_class: str
    message: str
    destination: dict[str, Any] | None
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int
    attempt: int
    failed_at_ms: int
    origin: str = ""  # topic/partition/offset of the original source record ("" when the source is unknown)
    value_truncated: int | None = None  # the original value's size when the error topic holds a cut value

    @property
    def label(self) -> str:
        """``vanity/database/schema.table`` of the failed destination ("" for a packet that failed as a whole)."""
        return label_of(self.destination)

    def to_json(self, *, with_value: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "partition": self.partition, "offset": self.offset, "code": self.code,
            "class": self.error_class, "message": self.message, "destination": self.destination,
            "destination_label": self.label,
            "source": {"topic": self.source_topic, "partition": self.source_partition,
                       "offset": self.source_offset, "timestamp_ms": self.source_timestamp_ms},
            "origin": self.origin, "attempt": self.attempt, "failed_at": iso(self.failed_at_ms),
            "failed_at_ms": self.failed_at_ms,
        }
        if self.value_truncated is not None:
            out["value_truncated"] = self.value_truncated
        if with_value:
            out["key"] = text(self.key)
            out["value"] = text(self.value)
            out["headers"] = {k: text(v) for k, v in self.headers}
        return out


def label_of(destination: dict[str, Any] | None) -> str:
    if not destination:
        return ""
    d = {k: str(destination.get(k, "-")) for k in ("vanity", "database", "table")}
    return destination_label(d["vanity"], d["database"], str(destination.get("schema", "public")), d["table"])


def selects(pattern: str, label: str) -> bool:
    """Whether ``--destination pattern`` selects the destination ``label`` (``vanity/database/schema.table``).

    Whole names only, from the left: ``vanity/database/schema.table`` selects exactly that destination,
    ``vanity/database`` every table of that database and ``vanity`` every destination of that vanity (a trailing
    ``/`` changes nothing). A substring match purged ``a/h1_a/public.tt`` and ``ba/h1_a/...`` beside a pasted
    ``a/h1_a/public.t``: an operator's filter selects what it names or nothing, never a neighbour.
    """
    whole = pattern.removesuffix("/")
    if not label or not whole:
        return False
    return label == whole or (whole.count("/") < 2 and label.startswith(whole + "/"))


@dataclass(frozen=True, slots=True)
class DlqFilter:
    """Which parked records an operation concerns; empty matches all."""

    ids: frozenset[str] | None = None
    code: str | None = None
    destination: str | None = None  # a label, or its leading vanity[/database] (see :func:`selects`)
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, r: DlqRecord) -> bool:
        if self.ids is not None and r.id not in self.ids:
            return False
        if self.code and r.code != self.code:
            return False
        if self.destination and not selects(self.destination, r.label):
            return False
        if self.since_ms is not None and r.failed_at_ms < self.since_ms:
            return False
        return not (self.until_ms is not None and r.failed_at_ms > self.until_ms)

    @property
    def empty(self) -> bool:
        return not (self.ids or self.code or self.destination or self.since_ms is not None
                    or self.until_ms is not None)


KEY_BYTES = 1024  # of the key, in a bounded record (user errors as the console lists them)
HEADER_BYTES = 1024  # of each header's value and name, in a bounded record


@dataclasses.dataclass(frozen=True, slots=True)
class Trimmed:
    """An error record whose value may be cut short (``size`` is the original length); a :func:`bound` one may
    also have its key cut (``key_size``, the original length) and its headers cut or dropped (``headers_size``,
    the original bytes of all names and values). Both are ``None`` when nothing of them was cut."""

    record: DlqRecord
    size: int
    key_size: int | None = None
    headers_size: int | None = None

    @property
    def truncated(self) -> bool:
        return self.size > len(self.record.value or b"")

    def cut_json(self) -> dict[str, Any]:
        """What was cut, for a JSON record: ``size`` and ``truncated`` (the value), then the key and headers."""
        out: dict[str, Any] = {"size": self.size, "truncated": self.truncated,
                               "key_truncated": self.key_size is not None,
                               "headers_truncated": self.headers_size is not None}
        if self.key_size is not None:
            out["key_size"] = self.key_size
        if self.headers_size is not None:
            out["headers_size"] = self.headers_size
        return out


def trim(record: DlqRecord, keep_bytes: int, *, headers: bool = True) -> Trimmed:
    value = record.value or b""
    if len(value) <= keep_bytes and headers:
        return Trimmed(record, len(value))
    short = value[:keep_bytes] if record.value is not None else None
    return Trimmed(dataclasses.replace(record, value=short, headers=record.headers if headers else ()), len(value))


def bound(record: DlqRecord, keep_bytes: int) -> Trimmed:
    """``record`` in a fixed size, whatever the client sent: the value cut to ``keep_bytes``, the key to
    :data:`KEY_BYTES`, each header's name and value to :data:`HEADER_BYTES`, and each header kept, in order, if it
    still fits in ``keep_bytes`` for all of them (the rest dropped: KaPoW's own ``kapow-*`` headers come last and
    are small, so a flood of client headers does not push them out).

    A client's headers go to the user-errors topic as they came: 1,300 user errors with a 1 MB header each made
    ``/api/user-errors`` answer 200 MB and the writer grow by a gigabyte a request, while their values were cut at
    16 KiB. Bounded, a read holds and answers at most a few times ``keep_bytes`` a record.
    """
    trimmed = trim(record, keep_bytes)
    key = trimmed.record.key
    key_size = len(key) if key is not None and len(key) > KEY_BYTES else None
    kept, headers_size = _bound_headers(record.headers, keep_bytes)
    if key_size is None and headers_size is None:
        return trimmed
    short = dataclasses.replace(trimmed.record, key=key[:KEY_BYTES] if key is not None else None, headers=kept)
    return Trimmed(short, trimmed.size, key_size, headers_size)


def _bound_headers(headers: tuple[tuple[str, bytes], ...],
                   budget: int) -> tuple[tuple[tuple[str, bytes], ...], int | None]:
    """The headers cut as :func:`bound` says, and their original size when anything was cut (else ``None``)."""
    kept: list[tuple[str, bytes]] = []
    total = used = 0
    cut = False
    for name, value in headers:
        total += len(name) + len(value)
        short_name, short_value = name[:HEADER_BYTES], value[:HEADER_BYTES]
        size = len(short_name) + len(short_value)
        cut = cut or size < len(name) + len(value) or used + size > budget
        if used + size <= budget:
            kept.append((short_name, short_value))
            used += size
    return tuple(kept), (total if cut else None)


def text(b: bytes | None) -> str | None:
    if b is None:
        return None
    return b.decode("utf-8", "replace")


def iso(ms: int) -> str:
    try:
        moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> int:
    """ISO 8601 (``2026-11-24T10:00:00Z``) or relative (``15m``, ``2h``, ``1d`` ago) -> epoch milliseconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return int((time.time() - int(text[:-1]) * units[text[-1]]) * 1000)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise KapowError(f"cannot read time {text!r}: use ISO 8601 (2026-11-24T10:00:00Z) or 15m/2h/1d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def _num(meta: dict[str, str], name: str) -> int:
    try:
        return int(meta.get(name, "-1"))
    except ValueError:
        return -1


def failed_at_ms(msg: Message) -> int:
    """The ``kapow-failed-at`` header alone (the DLQ's sort key: cheaper than decoding the whole record)."""
    headers: list[tuple[str, bytes | None]] = msg.headers() or []  # type: ignore[assignment]
    for k, v in headers:
        if k == H_FAILED_AT and v is not None:
            try:
                return int(v)
            except ValueError:
                return -1
    return -1


def decode_record(msg: Message) -> DlqRecord:
    """A record from a Kafka message on an error topic (its ``kapow-*`` headers decoded)."""
    headers: list[tuple[str, bytes | None]] = msg.headers() or []  # type: ignore[assignment]
    clean = tuple((k, v) for k, v in headers if v is not None)
    meta = {k: v.decode("utf-8", "replace") for k, v in clean if k.startswith(HEADER_PREFIX)}
    destination = None
    if H_DESTINATION in meta:
        try:
            found = msgspec.json.decode(meta[H_DESTINATION])
            destination = found if isinstance(found, dict) else None
        except msgspec.DecodeError:
            destination = None
    partition, offset = msg.partition() or 0, msg.offset() or 0
    source_topic = meta.get(H_TOPIC, "")
    source_partition, source_offset = _num(meta, H_PARTITION), _num(meta, H_OFFSET)
    origin = meta.get(H_ORIGIN, "")
    if not origin and source_topic and source_partition >= 0 and source_offset >= 0:
        origin = f"{source_topic}/{source_partition}/{source_offset}"
    truncated = _num(meta, H_VALUE_TRUNCATED) if H_VALUE_TRUNCATED in meta else None
    return DlqRecord(
        id=f"{partition}:{offset}", partition=partition, offset=offset, key=msg.key(), value=msg.value(),
        headers=clean, code=meta.get(H_CODE, "?"), error_class=meta.get(H_CLASS, "?"),
        message=meta.get(H_MESSAGE, ""), destination=destination, source_topic=source_topic,
        source_partition=source_partition, source_offset=source_offset, source_timestamp_ms=_num(meta, H_TIMESTAMP),
        attempt=max(_num(meta, H_ATTEMPT), 1), failed_at_ms=_num(meta, H_FAILED_AT), origin=origin,
        value_truncated=truncated if truncated is None or truncated >= 0 else None,
    )


def parse_origin(origin: str) -> tuple[str, int, int] | None:
    """``topic/partition/offset`` -> its parts (the topic may contain no ``/``); ``None`` when malformed."""
    topic, sep, rest = origin.rpartition("/")
    topic2, sep2, part = topic.rpartition("/")
    if not (sep and sep2 and topic2 and part.isdigit() and rest.isdigit()):
        return None
    return topic2, int(part), int(rest)
