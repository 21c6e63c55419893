"""What one source record asks for: its destinations, the operation on each (mode) and the data holding its key.

This is the audit's only reading of the contract, kept in one small method (:meth:`Asker.ask`) so that it can
grow here alone: packets (the ``context`` header and the envelope, read by the writer's own decoder), with their
destinations' ``mode`` and ``key``; and routed topics (``[[routes]]``: the record is the row, or a Debezium change
event whose operation decides the mode).

The key values themselves are cut out of ``data`` later, in the destination database, with the table's own types
(``json_populate_record``), exactly as the writer casts them. So ``data`` travels as the client's JSON: as it is
when short, else only its scalar values (a unique key cannot be a JSON object, and a B-tree entry is at most
2,704 bytes), which bounds what is stored per record whatever the packet's size.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

from kapow.config import Config
from kapow.contract import (
    HEADER_NAME_LIMIT,
    PacketDecoder,
    PipelineContext,
    copy_destination,
    destination_json,
    destination_label,
    shorten,
)
from kapow.errors import PacketError

MAX_KEYDOC_RAW = 4096  # data up to this many bytes travels as it is
MAX_KEY_TEXT = 2704  # the longest value a B-tree unique index can hold
_CACHE_LIMIT = 10_000  # distinct pipeline contexts remembered per audit (they repeat from packet to packet)


class Mode(enum.IntEnum):
    """The operation a destination asks for (PRODUCT.md §1); the row is present after the first two."""

    INSERT = 1
    UPSERT = 2
    DELETE = 3


_MODES = {"insert": Mode.INSERT, "upsert": Mode.UPSERT, "delete": Mode.DELETE}
GUARDED = 10  # added to a mode guarded by a version column (kapow.audit.checks reads it back with % and >=)


@dataclass(frozen=True, slots=True)
class Ask:
    """One destination of one record: where, how, and by which key columns (``()``: the table's own key)."""

    vanity: str
    database: str
    schema: str
    table: str
    mode: Mode
    key: tuple[str, ...]
    guarded: bool = False  # a version guard: the writer may rightly make it a no-op (an older version)

    @property
    def code(self) -> int:
        """The mode as the scratch tables hold it: :data:`GUARDED` added for a guarded one."""
        return int(self.mode) + (GUARDED if self.guarded else 0)

    @property
    def label(self) -> str:
        """As the error records' ``kapow-destination`` spells it: each name cut to 256 characters (a name longer
        than that matched no error record, and the packet its user error answered was reported missing)."""
        names = (self.vanity, self.database, self.schema, self.table)
        return destination_label(*(shorten(name, HEADER_NAME_LIMIT) for name in names))


class _Envelope(msgspec.Struct):
    pipeline_context: msgspec.Raw
    data: msgspec.Raw


_envelope = msgspec.json.Decoder(_Envelope)
_context = msgspec.json.Decoder(PipelineContext)  # the writer's own shape of a destination list
_data = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class Asked:
    """A packet's destinations and the JSON that holds its key values (see the module docstring)."""

    asks: tuple[Ask, ...]
    keydoc: bytes


FILTERED: Any = object()  # Asker.ask's answer for a record that is not the pipeline's (no header, a skipped tombstone)


class Asker:
    """Reads records for the audit; remembers decoded destination lists by their bytes (bounded, per audit)."""

    def __init__(self, config: Config | None = None) -> None:
        self._cache: dict[bytes, tuple[Ask, ...] | None] = {}
        self._decoder = PacketDecoder(max_bytes=1 << 30, max_depth=256, max_destinations=1 << 20)
        self._routes: dict[str, Any] = {}
        if config is not None:
            from kapow.pipeline.route import route_specs

            self._routes = route_specs(config)

    def is_packet(self, headers: list[tuple[str, bytes | None]] | None) -> bool:
        """Filter step's verdict: a record without the ``context`` header is someone else's traffic."""
        return self._decoder.is_pipeline_packet(headers)

    def ask(self, topic: str, headers: list[tuple[str, bytes | None]], value: bytes | None,
            key: bytes | None) -> Asked | Any | None:
        """What a record asks for: :data:`FILTERED` (not the pipeline's), ``None`` (unreadable: the writer made it a
        user error) or :class:`Asked`."""
        route = self._routes.get(topic)
        if route is not None:
            return self._routed(route, value, key)
        if not self.is_packet(headers):
            return FILTERED
        asked = self.asks(value)
        only = copy_destination(headers)
        if only is None or value is None or not isinstance(asked, Asked) or len(asked.asks) < 2:
            return asked
        # a copy republished for one destination (kapow-destination) lands there alone, as the writer files it
        # (kapow.pipeline.sort): to all of them only when it names none of them
        envelope = _envelope.decode(value)  # (decoded already by asks: cannot fail)
        found = _context.decode(bytes(envelope.pipeline_context)).destinations
        mine = tuple(a for a, d in zip(asked.asks, found, strict=True) if destination_json(d) == only)
        return Asked(mine, asked.keydoc) if mine else asked

    def _routed(self, route: Any, value: bytes | None, key: bytes | None) -> Asked | Any | None:
        r = route.config
        ask = Ask(r.vanity, r.database, r.schema, r.table, _MODES[r.mode], tuple(r.key or ()), r.version is not None)
        if r.format == "debezium":
            if value is None:
                return FILTERED
            return self._change(route, ask, value, key)
        if value is None:
            if not route.deletes:
                return FILTERED
            from kapow.pipeline.sort import tombstone_row

            try:
                doc = tombstone_row(key, route)
            except PacketError:
                return None
            return Asked((_with_mode(ask, Mode.DELETE),), doc)
        keydoc = keydoc_of(value)
        return None if keydoc is None else Asked((ask,), keydoc)

    @staticmethod
    def _change(route: Any, ask: Ask, value: bytes, key: bytes | None) -> Asked | Any | None:
        """A Debezium event read loosely: only its operation and its key values matter here, and those are plain
        numbers and strings; a full decode would need the table's column types for every other column."""
        try:
            event = _data.decode(value)
            if isinstance(event.get("payload"), dict) and "schema" in event:
                event = event["payload"]
            op = event.get("op")
            if op in ("c", "r", "u"):
                row, mode = event.get("after"), Mode.UPSERT
            elif op == "d":
                row, mode = event.get("before"), Mode.DELETE
                if not row and key:
                    decoded = _data.decode(key)
                    row = decoded.get("payload", decoded) if isinstance(decoded, dict) else None
            else:
                return FILTERED  # truncate, message: nothing to land
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError, AttributeError):
            return None
        if not isinstance(row, dict):
            return None
        keydoc = keydoc_of(msgspec.json.encode({k: v for k, v in row.items() if not isinstance(v, dict | list)}))
        return None if keydoc is None else Asked((_with_mode(ask, mode),), keydoc)

    def asks(self, value: bytes | None) -> Asked | None:
        """The packet's destinations and key JSON; ``None`` when the writer could not read it (a user error)."""
        if value is None:
            return None
        try:
            envelope = _envelope.decode(value)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        context = bytes(envelope.pipeline_context)
        asks = self._cache.get(context, ())
        if asks == ():
            asks = self._decode_context(context)
            if len(self._cache) < _CACHE_LIMIT and len(context) <= 2048:
                self._cache[context] = asks
        if asks is None:
            return None
        keydoc = keydoc_of(bytes(envelope.data))
        return None if keydoc is None else Asked(asks, keydoc)

    @staticmethod
    def _decode_context(context: bytes) -> tuple[Ask, ...] | None:
        try:
            found = _context.decode(context).destinations
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None
        if not found:
            return None
        return tuple(Ask(d.vanity, d.database, d.schema, d.table, _MODES.get(d.mode, Mode.INSERT),
                         tuple(d.key or ()), d.version is not None) for d in found)


def _with_mode(ask: Ask, mode: Mode) -> Ask:
    return Ask(ask.vanity, ask.database, ask.schema, ask.table, mode, ask.key, ask.guarded)


def keydoc_of(data: bytes) -> bytes | None:
    """``data`` as it is when short, else a JSON object of its scalar values; ``None`` if it is not an object."""
    head = data.lstrip()[:1]
    if head != b"{":
        return None
    if len(data) <= MAX_KEYDOC_RAW:
        if not data.isascii():  # msgspec.Raw passes invalid UTF-8 through; the writer refuses it (not_json)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return data
    try:
        decoded = _data.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
    scalars = {k: v for k, v in decoded.items()
               if not isinstance(v, dict | list) and not (isinstance(v, str) and len(v) > MAX_KEY_TEXT)}
    return msgspec.json.encode(scalars)
