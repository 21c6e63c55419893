"""The packet contract (PRODUCT.md §1): the ``context`` header and the JSON envelope.

Decoding is the hot path, so it is typed and done by msgspec in C. The ``data`` object is kept as the raw JSON
bytes the client sent (``msgspec.Raw``): they go to PostgreSQL as they are, so a number such as
``12345678901234567.89`` reaches a ``numeric`` column exactly, never through a Python float. A second, cheap
decode of ``data`` into a dict gives the column names and value kinds that validation needs.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from kapow.errors import ErrorCode, PacketError

CONTEXT_HEADER = "context"
CONTEXT_VALUE = b'{"consumer": {"type": "data_pipeline"}}'
PIPELINE_CONSUMER_TYPE = "data_pipeline"
SINK_TYPES = frozenset({"postgres"})

# PostgreSQL identifiers we accept from packets: plain, unquoted-style names. Anything else (quotes, spaces,
# semicolons) is refused before it gets near SQL; accepted names are still always quoted when used.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
MAX_IDENTIFIER_BYTES = 63


class _Consumer(msgspec.Struct):
    type: str = ""


class _Context(msgspec.Struct):
    consumer: _Consumer = msgspec.field(default_factory=_Consumer)


class Destination(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Where a packet goes; hashable so that it can key caches and groups directly."""

    vanity: str
    database: str
    table: str
    schema: str = "public"
    type: str = "postgres"

    @property
    def label(self) -> str:
        """``vanity/database/schema.table``: the one way a destination is written in logs, the CLI and the API."""
        return destination_label(self.vanity, self.database, self.schema, self.table)


class PipelineContext(msgspec.Struct):
    destinations: list[Destination]


class _Envelope(msgspec.Struct):
    # Both halves stay raw: ``data`` goes to PostgreSQL as the client wrote it, and ``pipeline_context`` repeats
    # from packet to packet, so its decoded destinations are cached by its bytes instead of rebuilt each time.
    pipeline_context: msgspec.Raw
    data: msgspec.Raw


Packet = tuple[tuple[Destination, ...], bytes]  # (destinations, the raw ``data`` JSON)


_context_decoder = msgspec.json.Decoder(_Context)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_pipeline_context_decoder = msgspec.json.Decoder(PipelineContext)
_destinations_cache: dict[bytes, tuple[Destination, ...]] = {}
_data_decoder = msgspec.json.Decoder(dict[str, Any])
_context_cache: dict[bytes, bool] = {}


def is_pipeline_packet(headers: list[tuple[str, bytes | None]] | None) -> bool:
    """True when the record carries the ``context`` header naming the data pipeline.

    Header values repeat from packet to packet, so verdicts are cached by the header's bytes; the cache is
    bounded so that hostile traffic with ever-new header values cannot grow it without limit.
    """
    if not headers:
        return False
    for name, value in headers:
        if name != CONTEXT_HEADER or value is None:
            continue
        verdict = _context_cache.get(value)
        if verdict is None:
            try:
                verdict = _context_decoder.decode(value).consumer.type == PIPELINE_CONSUMER_TYPE
            except (msgspec.DecodeError, UnicodeDecodeError):
                verdict = False
            if len(_context_cache) < 1024:
                _context_cache[value] = verdict
        if verdict:
            return True
    return False


def decode_envelope(value: bytes | None, *, max_bytes: int) -> Packet:
    """Decode a packet's value into (destinations, raw data); raise :class:`PacketError` with a user error code."""
    if value is None:
        raise PacketError(ErrorCode.NOT_JSON, "packet has no value")
    if len(value) > max_bytes:
        raise PacketError(ErrorCode.TOO_LARGE, f"packet is {len(value)} bytes, the limit is {max_bytes}")
    try:
        envelope = _envelope_decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise PacketError(ErrorCode.BAD_PACKET, f"bad packet shape: {_describe(exc)}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise PacketError(ErrorCode.NOT_JSON, f"value is not UTF-8 JSON: {_describe(exc)}") from None
    context = bytes(envelope.pipeline_context)
    destinations = _destinations_cache.get(context)
    if destinations is None:
        try:
            destinations = tuple(_pipeline_context_decoder.decode(context).destinations)
        except msgspec.ValidationError as exc:
            raise PacketError(ErrorCode.BAD_PACKET, f"bad packet shape: pipeline_context.{_describe(exc)}") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise PacketError(ErrorCode.NOT_JSON, f"value is not UTF-8 JSON: {_describe(exc)}") from None
        if not destinations:
            raise PacketError(ErrorCode.BAD_PACKET, "pipeline_context.destinations is empty")
        if len(_destinations_cache) < 10_000:  # bounded: hostile traffic cannot grow it forever
            _destinations_cache[context] = destinations
    return destinations, bytes(envelope.data)


def decode_data(raw: bytes, *, max_depth: int) -> dict[str, Any]:
    """Decode ``data`` into a dict (column -> value) and bound its nesting depth."""
    try:
        data = _data_decoder.decode(raw)
    except msgspec.ValidationError:
        raise PacketError(ErrorCode.BAD_PACKET, "data must be a JSON object of column -> value") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # e.g. invalid UTF-8 inside the raw data
        raise PacketError(ErrorCode.NOT_JSON, f"data is not JSON: {_describe(exc)}") from None
    if not data:
        raise PacketError(ErrorCode.BAD_PACKET, "data is empty: give at least one column")
    # Depth can only exceed the limit if there are more openers than the limit: counting bytes in C spares
    # the walk for the (nearly all) packets whose values are flat.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _depth(data, max_depth + 1) > max_depth + 1:
        raise PacketError(ErrorCode.BAD_PACKET, f"data is nested deeper than {max_depth} levels")
    return data


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping early once past ``limit``."""
    depth = 0
    level: list[Any] = [value]
    while level and depth <= limit:
        depth += 1
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                nxt.extend(v for v in item if isinstance(v, dict | list))
        level = nxt
    return depth


def check_identifier(kind: str, name: str) -> None:
    """Refuse any schema/table name that is not a plain identifier; it is never spliced into SQL either way."""
    if not _IDENTIFIER.fullmatch(name) or len(name.encode()) > MAX_IDENTIFIER_BYTES:
        shown = name if len(name) <= 80 else name[:79] + "…"
        raise PacketError(ErrorCode.UNKNOWN_TABLE, f"invalid {kind} name {shown!r}: use letters, digits and _")


def _describe(exc: Exception) -> str:
    return str(exc).replace("`", "").replace("$.", "").replace(" - at $", "")


def make_packet(destinations: list[dict[str, str]], data: Any) -> bytes:
    """Encode a packet value from destinations and data (used by ``kapow send`` and :mod:`kapow.client`)."""
    return msgspec.json.encode({"pipeline_context": {"destinations": destinations}, "data": data})


def destination_label(vanity: str, database: str, schema: str, table: str) -> str:
    """The destination label (see :attr:`Destination.label`); pasteable into ``kapow dlq --destination``."""
    return f"{vanity}/{database}/{schema}.{table}"


def destination_json(dest: Destination) -> bytes:
    """One destination as the JSON the client wrote, for the ``kapow-destination`` error header."""
    return msgspec.json.encode(
        {"type": dest.type, "vanity": dest.vanity, "database": dest.database, "schema": dest.schema,
         "table": dest.table}
    )
