"""Debezium change events (as Kafka Connect's JSON converter writes them) decoded into rows PostgreSQL accepts.

One record value in, one :class:`Change` out: ``c``/``r``/``u`` upsert ``after``, ``d`` deletes by the key, ``t``
(truncate), ``m`` (logical decoding message) and tombstones are skipped with a reason. The row is JSON text that
``json_populate_recordset(NULL::target, '[row, …]')`` turns into the right values (see
:mod:`kapow.formats.values` for why every converted value is text), so the writer lands change events with the
same batched statement it uses for packets.

Works with or without the schema envelope. With it (``{"schema": …, "payload": …}``) each column is converted by
its Connect logical type; the schema is the same for every event of a table version, so :class:`ChangeDecoder`
keeps the plan built from it and recognises it by its bytes (a ``memcmp``, not a parse). Without it the target
columns' PostgreSQL types (``column_types``) say how to read the bare values.

Decoding is msgspec in C: ``schema`` is skipped as a raw span, ``payload`` parsed once into a typed struct, and
only the columns whose encoding differs from PostgreSQL's text (timestamps, decimals, bytea, json …) cost Python
work. Numbers are never routed through a float: JSON floats decode to ``Decimal`` and are written back digit for
digit, big integers stay exact.

Everything malformed raises :class:`~kapow.errors.PacketError` (``not_json``, ``too_large`` or
``bad_change_event``); nothing else escapes, whatever the bytes.
"""

from __future__ import annotations

import decimal
import enum
import threading
from collections.abc import Mapping
from typing import Any

import msgspec

from kapow.contract import KeySets, describe
from kapow.errors import ErrorCode, PacketError
from kapow.formats.debezium_types import Plan, SchemaField, column_plan, depth, schema_plan
from kapow.formats.values import BadValue

BAD_CHANGE_EVENT = ErrorCode.BAD_CHANGE_EVENT

# Debezium's ``unavailable.value.placeholder`` default: an unchanged TOASTed column in an update (REPLICA IDENTITY
# DEFAULT). Such a column is left out of the row, so that an upsert keeps the value the target already has.
UNAVAILABLE = "__debezium_unavailable_value"
_UNAVAILABLE_B64 = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="  # the same placeholder in a bytea column
_UNAVAILABLE_MARKERS = (UNAVAILABLE.encode(), _UNAVAILABLE_B64[:36].encode())

_SCHEMA_CACHE_SIZE = 64
# ... and at most this many bytes of schemas (each can be as large as a record: 64 of them held up to 64 MB a route)
_SCHEMA_CACHE_BYTES = 8 * 1024 * 1024


class ChangeKind(enum.Enum):
    """What a change event asks of the target table."""

    UPSERT = "upsert"
    DELETE = "delete"
    SKIP = "skip"


class Change(msgspec.Struct, frozen=True, gc=False):
    """One decoded change event (a msgspec Struct: one is made per event, and a frozen dataclass's ``__init__``
    cost several times as much).

    ``row`` is JSON object text (column -> value): for UPSERT the ``after`` image, for DELETE the key columns (the
    non-null columns of ``before``, or else the record key). ``lsn``/``ts_ms`` come from the ``source`` block, for a
    version guard. ``reason`` says why a SKIP is skipped (``tombstone``, ``truncate``, ``message``).
    """

    kind: ChangeKind
    row: bytes | None
    lsn: int | None = None
    ts_ms: int | None = None
    reason: str | None = None
    keys: tuple[str, ...] = ()  # the column names of ``row``, in its order (one shared tuple per set of names)


class _Source(msgspec.Struct, forbid_unknown_fields=False):
    lsn: int | None = None
    ts_ms: int | None = None


class _Payload(msgspec.Struct, forbid_unknown_fields=False):
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    source: _Source | None = None
    op: str | None = None


_ABSENT = msgspec.Raw(b"")
_NULL = b"null"


class _Top(_Payload, forbid_unknown_fields=False):
    # With the schema envelope these two are set (raw spans, parsed later or never) and the payload's own fields
    # are absent. msgspec.Raw cannot be optional: an empty span means absent, b"null" a JSON null.
    schema: msgspec.Raw = _ABSENT
    payload: msgspec.Raw = _ABSENT


class _KeyTop(msgspec.Struct, forbid_unknown_fields=False):
    schema: msgspec.Raw = _ABSENT
    payload: msgspec.Raw = _ABSENT


_TOP = msgspec.json.Decoder(_Top, float_hook=decimal.Decimal)
_PAYLOAD = msgspec.json.Decoder(_Payload, float_hook=decimal.Decimal)
_ROW = msgspec.json.Decoder(dict[str, Any], float_hook=decimal.Decimal)
_SCHEMA = msgspec.json.Decoder(SchemaField)
_ENCODER = msgspec.json.Encoder(decimal_format="number")
_UPSERT_OPS = frozenset({"c", "r", "u"})
_SKIP_OPS = {"t": "truncate", "m": "message"}
_KEYSETS = 1024  # sets of column names interned per route (a table has a few; more are not interned)


def _bad(message: str) -> PacketError:
    return PacketError(BAD_CHANGE_EVENT, message)


class ChangeDecoder:
    """Decodes the change events of one route (one target table); keeps the plans it builds.

    Thread-safe: the plans are immutable once built, the cache is a bounded dict changed under a lock, and the
    last schema seen is one tuple swapped atomically; the interned sets of column names are a bounded dict
    filled with ``setdefault`` (atomic).
    """

    def __init__(self, *, column_types: Mapping[str, str] | None = None, max_bytes: int, max_depth: int) -> None:
        self._column_types = dict(column_types) if column_types is not None else None
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._bare_plan: Plan = column_plan(column_types, max_depth) if column_types else {}
        self._lock = threading.Lock()
        self._plans: dict[bytes, Plan] = {}
        self._plans_bytes = 0  # the schemas' bytes held as the keys of _plans
        self._last: tuple[bytes, Plan] = (b"", {})
        self._last_prefix: tuple[bytes, Plan] = (b"", {})  # b'{"schema":<last schema>,"payload":' and its plan
        # one tuple per set of column names, so the lane validates and plans a shape once, not each row
        self._keysets = KeySets(max_sets=_KEYSETS)

    def decode(self, value: bytes | None, key: bytes | None = None) -> Change:
        """Decode one record (value and key bytes) into a :class:`Change`, or raise :class:`PacketError`."""
        if value is None:
            return Change(ChangeKind.SKIP, None, reason="tombstone")
        if len(value) > self._max_bytes:
            raise PacketError(ErrorCode.TOO_LARGE,
                              f"change event is {len(value)} bytes, the limit is {self._max_bytes}")
        try:
            return self._decode(value, key)
        except PacketError:
            raise
        except BadValue as exc:
            raise _bad(str(exc)) from None
        except msgspec.ValidationError as exc:
            raise _bad(f"not a Debezium change event: {describe(exc)}") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise PacketError(ErrorCode.NOT_JSON, f"change event is not UTF-8 JSON: {describe(exc, value)}") from None
        except RecursionError:
            raise _bad("change event is nested too deeply") from None

    # ---------------------------------------------------------------- internals

    def _decode(self, value: bytes, key: bytes | None) -> Change:
        fast = self._same_schema(value)
        payload: _Payload | None = None
        if fast is not None:
            plan, raw = fast
            try:
                payload = _PAYLOAD.decode(raw)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                payload = None  # not exactly one object after all: the full parse says what it is
        if payload is None:
            top = _TOP.decode(value)
            payload = top
            raw = value
            plan = self._bare_plan
            if top.payload or top.schema:
                raw = bytes(top.payload)
                if raw in (b"", _NULL):  # the converter's envelope around a null value
                    return Change(ChangeKind.SKIP, None, reason="tombstone")
                payload = _PAYLOAD.decode(raw)
                schema = bytes(top.schema)
                if schema not in (b"", _NULL):
                    plan = self._envelope_plan(schema)
        source = payload.source
        lsn = source.lsn if source is not None else None
        ts_ms = source.ts_ms if source is not None else None
        op = payload.op
        if op in _UPSERT_OPS:
            if payload.after is None:
                raise _bad(f"op {op!r} without an 'after' row")
            row, keys = self._row(payload.after, plan, raw)
            return Change(ChangeKind.UPSERT, row, lsn, ts_ms, keys=keys)
        if op == "d":
            row, keys = self._delete_key(payload.before, plan, raw, key)
            return Change(ChangeKind.DELETE, row, lsn, ts_ms, keys=keys)
        reason = _SKIP_OPS.get(op or "")
        if reason is not None:
            return Change(ChangeKind.SKIP, None, lsn, ts_ms, reason)
        if op is None:
            raise _bad("not a Debezium change event: no 'op'")
        raise _bad(f"unknown op {op[:20]!r} (expected c, r, u, d, t or m)")

    def _same_schema(self, value: bytes) -> tuple[Plan, bytes] | None:
        """The plan and the payload's bytes when ``value`` is ``{"schema":<the last schema>,"payload":<payload>}``
        byte for byte, as the JSON converter writes every event of a table version: the 3.5 kB schema is then
        compared (``memcmp``), not parsed. Anything else (spaces, other keys, another order, another schema)
        returns None and takes the full parse; so does a payload that turns out not to be exactly one object
        (the caller's fallback)."""
        prefix, plan = self._last_prefix
        if prefix and value.startswith(prefix) and value.endswith(b"}"):
            raw = value[len(prefix):-1]
            if raw.startswith(b"{") and raw.endswith(b"}"):
                return plan, raw
        return None

    def _envelope_plan(self, schema: bytes) -> Plan:
        last_schema, last_plan = self._last
        if schema == last_schema:
            return last_plan
        plan = self._plans.get(schema)
        if plan is None:
            envelope = _SCHEMA.decode(schema)
            row_schema = _row_schema(envelope)
            plan = schema_plan(row_schema, self._max_depth, self._column_types) if row_schema else self._bare_plan
            with self._lock:
                if len(self._plans) >= _SCHEMA_CACHE_SIZE or \
                        self._plans_bytes + len(schema) > _SCHEMA_CACHE_BYTES:
                    self._plans.clear()  # bounded: a flood of ever-new schemas cannot grow it
                    self._plans_bytes = 0
                if len(schema) <= _SCHEMA_CACHE_BYTES // 8 and schema not in self._plans:
                    self._plans[schema] = plan  # (a schema of over 1 MB is planned each time, never kept)
                    self._plans_bytes += len(schema)
        self._last = (schema, plan)
        self._last_prefix = (b'{"schema":' + schema + b',"payload":', plan)
        return plan

    def _row(self, row: dict[str, Any], plan: Plan, raw: bytes) -> tuple[bytes, tuple[str, ...]]:
        """The row re-encoded, and its column names: those of the dict encoded, in its order (no decode of the
        text just written)."""
        self._check(row, raw)
        if _UNAVAILABLE_MARKERS[0] in raw or _UNAVAILABLE_MARKERS[1] in raw:
            for name in [k for k, x in row.items() if _unavailable(x)]:
                del row[name]
        for name, convert in plan.items():
            x = row.get(name)
            if x is not None:
                try:
                    row[name] = convert(x)
                except BadValue as exc:
                    raise _bad(f"column {name[:63]!r}: {exc}") from None
        try:
            doc = _ENCODER.encode(row)
        except (TypeError, ValueError, OverflowError) as exc:  # nothing decoded should fail here; never crash
            raise _bad(f"row cannot be re-encoded: {exc}") from None
        return doc, self._keysets.intern(tuple(row))

    def _delete_key(self, before: dict[str, Any] | None, plan: Plan, raw: bytes,
                    key: bytes | None) -> tuple[bytes, tuple[str, ...]]:
        if before:
            # REPLICA IDENTITY DEFAULT: only the key columns are set, the rest null; FULL: every column.
            kept = {k: x for k, x in before.items() if x is not None}
            if kept:
                return self._row(kept, plan, raw)
        if key is None:
            raise _bad("delete event without a 'before' row nor a record key")
        if len(key) > self._max_bytes:
            raise PacketError(ErrorCode.TOO_LARGE, f"record key is {len(key)} bytes, the limit is {self._max_bytes}")
        top = msgspec.json.decode(key, type=_KeyTop)
        key_raw, key_plan = key, self._bare_plan
        if top.payload:
            key_raw = bytes(top.payload)
            key_schema = bytes(top.schema)
            if key_schema not in (b"", _NULL):
                key_plan = schema_plan(_SCHEMA.decode(key_schema), self._max_depth, self._column_types)
        try:
            columns = _ROW.decode(key_raw)
        except msgspec.ValidationError:
            raise _bad("record key is not a JSON object of key columns") from None
        if not columns:
            raise _bad("record key has no columns")
        return self._row(columns, key_plan, key_raw)

    def _check(self, row: dict[str, Any], raw: bytes) -> None:
        """Bound nesting and refuse NUL, which no PostgreSQL text can hold; both scans run only when the raw bytes
        say they might find something."""
        if raw.count(b"[") + raw.count(b"{") > self._max_depth and depth(row, self._max_depth + 1) > self._max_depth:
            raise _bad(f"row is nested deeper than {self._max_depth} levels")
        if b"\\u0000" in raw and _has_nul(row):
            raise _bad("row holds a NUL character (\\u0000), which PostgreSQL text cannot store")


def _row_schema(envelope: SchemaField) -> SchemaField | None:
    """The row struct of an envelope schema: the ``after`` field (``before`` has the same struct)."""
    if envelope.type != "struct" or envelope.fields is None:
        raise BadValue("the schema of a change event must be a struct")
    by_name = {f.field: f for f in envelope.fields}
    return by_name.get("after") or by_name.get("before")


def _unavailable(value: Any) -> bool:
    if type(value) is str:
        return value in (UNAVAILABLE, _UNAVAILABLE_B64)
    return type(value) is list and len(value) == 1 and value[0] == UNAVAILABLE


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if "\x00" in item:
                return True
        elif type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False


def decode_change(value: bytes | None, key: bytes | None, *, column_types: Mapping[str, str] | None = None,
                  max_bytes: int, max_depth: int) -> Change:
    """Decode one Debezium change event; see :class:`ChangeDecoder` (which keeps its plans between calls, and is
    what a route should hold: this function builds them anew every time)."""
    return ChangeDecoder(column_types=column_types, max_bytes=max_bytes, max_depth=max_depth).decode(value, key)
