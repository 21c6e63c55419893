"""What one source record asks for: its destinations, the operation on each (mode) and the data holding its key.

This is the audit's only reading of the packet contract, kept in one small function (:meth:`Asker.asks`) so that
the contract can grow here alone: destination ``mode`` and ``key`` (issue 11) are read already; routed topics
(issue 12: a plain topic with a fixed destination and mode) will add a branch on the record's topic.

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

from kapow.contract import destination_label, is_pipeline_packet

MAX_KEYDOC_RAW = 4096  # data up to this many bytes travels as it is
MAX_KEY_TEXT = 2704  # the longest value a B-tree unique index can hold
_CACHE_LIMIT = 10_000  # distinct pipeline contexts remembered per audit (they repeat from packet to packet)


class Mode(enum.IntEnum):
    """The operation a destination asks for (PRODUCT.md §1); the row is present after the first two."""

    INSERT = 1
    UPSERT = 2
    DELETE = 3


_MODES = {"insert": Mode.INSERT, "upsert": Mode.UPSERT, "delete": Mode.DELETE}


@dataclass(frozen=True, slots=True)
class Ask:
    """One destination of one record: where, how, and by which key columns (``()``: the table's own key)."""

    vanity: str
    database: str
    schema: str
    table: str
    mode: Mode
    key: tuple[str, ...]

    @property
    def label(self) -> str:
        return destination_label(self.vanity, self.database, self.schema, self.table)


class _Destination(msgspec.Struct, frozen=True):
    vanity: str
    database: str
    table: str
    schema: str = "public"
    type: str = "postgres"
    mode: str = "insert"
    key: list[str] | None = None
    version: str | None = None  # issue 11: ordering column; it does not change whether a row is there


class _Context(msgspec.Struct):
    destinations: list[_Destination]


class _Envelope(msgspec.Struct):
    pipeline_context: msgspec.Raw
    data: msgspec.Raw


_envelope = msgspec.json.Decoder(_Envelope)
_context = msgspec.json.Decoder(_Context)
_data = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class Asked:
    """A packet's destinations and the JSON that holds its key values (see the module docstring)."""

    asks: tuple[Ask, ...]
    keydoc: bytes


class Asker:
    """Reads records for the audit; remembers decoded destination lists by their bytes (bounded, per audit)."""

    def __init__(self) -> None:
        self._cache: dict[bytes, tuple[Ask, ...] | None] = {}

    def is_packet(self, headers: list[tuple[str, bytes | None]] | None) -> bool:
        """Filter step's verdict: a record without the ``context`` header is someone else's traffic."""
        return is_pipeline_packet(headers)

    def asks(self, value: bytes | None) -> Asked | None:
        """The packet's destinations and key JSON; ``None`` when the writer could not read it (a user error)."""
        if value is None:
            return None
        try:
            envelope = _envelope.decode(value)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        context = bytes(envelope.pipeline_context)
        asks = self._cache.get(context, ())
        if asks == ():
            asks = self._decode_context(context)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[context] = asks
        if asks is None:
            return None
        keydoc = keydoc_of(bytes(envelope.data))
        return None if keydoc is None else Asked(asks, keydoc)

    @staticmethod
    def _decode_context(context: bytes) -> tuple[Ask, ...] | None:
        try:
            found = _context.decode(context).destinations
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        if not found:
            return None
        return tuple(Ask(d.vanity, d.database, d.schema, d.table, _MODES.get(d.mode, Mode.INSERT),
                         tuple(d.key or ())) for d in found)


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
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    scalars = {k: v for k, v in decoded.items()
               if not isinstance(v, dict | list) and not (isinstance(v, str) and len(v) > MAX_KEY_TEXT)}
    return msgspec.json.encode(scalars)
