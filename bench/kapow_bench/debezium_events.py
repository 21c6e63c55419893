"""Debezium change events as the PostgreSQL source connector writes them, made without a connector.

Modelled on the events captured from the real connector in ``tests/fixtures/debezium`` (Debezium 3.6, Kafka
Connect's JSON converter with ``schemas.enable=true``): the record key is ``{"schema": Key, "payload":
{"event_id": …}}``; the value is ``{"schema": Envelope, "payload": {"before", "after", "source", "transaction",
"op", "ts_ms", "ts_us", "ts_ns"}}`` with the ``io.debezium.connector.postgresql.Source`` block (a growing ``lsn``
and ``txId``). Column types are those the connector emits by default for the ``events`` shape: ``numeric(12,2)``
as Connect ``Decimal`` (base64 of the unscaled two's-complement integer, scale 2), ``timestamptz`` as
``io.debezium.time.ZonedTimestamp`` text. The source table's non-key columns are nullable, as in the fixtures'
table, so a delete's ``before`` (``REPLICA IDENTITY DEFAULT``) is the key and nulls, which every converter accepts.

The stream is a snapshot (``op: r``) of the first keys, then creates, updates (``before`` null, as with the
default replica identity) and deletes over the key space; no tombstones (``tombstones.on.delete=false``): they
land nothing and would only pad the count. Both KaPoW's ``debezium`` route and the peer read these same bytes.
"""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import msgspec

from kapow_bench.shapes import Row

_CONNECTOR_VERSION = "3.6.1.Final"
_T0_MS = 1_795_600_000_000
_LSN0 = 400_000_000

_ROW_FIELDS: list[dict[str, Any]] = [
    {"type": "int64", "optional": False, "field": "event_id"},
    {"type": "string", "optional": True, "field": "account"},
    {"type": "string", "optional": True, "field": "kind"},
    {"type": "bytes", "optional": True, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
     "parameters": {"scale": "2", "connect.decimal.precision": "12"}, "field": "amount"},
    {"type": "string", "optional": True, "field": "currency"},
    {"type": "string", "optional": True, "name": "io.debezium.time.ZonedTimestamp", "version": 1,
     "field": "created_at"},
    {"type": "string", "optional": True, "field": "note"},
    {"type": "int64", "optional": True, "default": 0, "field": "rev"},
]
_COLUMNS = tuple(f["field"] for f in _ROW_FIELDS)
_SOURCE_FIELDS: list[dict[str, Any]] = [
    {"type": "string", "optional": False, "field": "version"},
    {"type": "string", "optional": False, "field": "connector"},
    {"type": "string", "optional": False, "field": "name"},
    {"type": "int64", "optional": False, "field": "ts_ms"},
    {"type": "string", "optional": True, "name": "io.debezium.data.Enum", "version": 1,
     "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
     "default": "false", "field": "snapshot"},
    {"type": "string", "optional": False, "field": "db"},
    {"type": "string", "optional": True, "field": "sequence"},
    {"type": "int64", "optional": True, "field": "ts_us"},
    {"type": "int64", "optional": True, "field": "ts_ns"},
    {"type": "string", "optional": False, "field": "schema"},
    {"type": "string", "optional": False, "field": "table"},
    {"type": "int64", "optional": True, "field": "txId"},
    {"type": "int64", "optional": True, "field": "lsn"},
    {"type": "int64", "optional": True, "field": "xmin"},
    {"type": "string", "optional": True, "field": "origin"},
    {"type": "int64", "optional": True, "field": "origin_lsn"},
]
_TRANSACTION: dict[str, Any] = {
    "type": "struct", "optional": True, "name": "event.block", "version": 1, "field": "transaction",
    "fields": [{"type": "string", "optional": False, "field": "id"},
               {"type": "int64", "optional": False, "field": "total_order"},
               {"type": "int64", "optional": False, "field": "data_collection_order"}]}


def _compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def decimal_base64(amount: str, scale: int = 2) -> str:
    """A decimal string as Connect's ``Decimal`` logical type carries it in JSON."""
    unscaled = int(Decimal(amount).scaleb(scale).to_integral_exact())
    length = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode()


class EventEncoder:
    """Encodes the change events of one source table (``prefix.public.table``) into Kafka keys and values."""

    def __init__(self, *, prefix: str, database: str, table: str) -> None:
        name = f"{prefix}.public.{table}"
        value_schema = {"type": "struct", "fields": [
            {"type": "struct", "fields": _ROW_FIELDS, "optional": True, "name": f"{name}.Value", "field": "before"},
            {"type": "struct", "fields": _ROW_FIELDS, "optional": True, "name": f"{name}.Value", "field": "after"},
            {"type": "struct", "fields": _SOURCE_FIELDS, "optional": False,
             "name": "io.debezium.connector.postgresql.Source", "version": 1, "field": "source"},
            _TRANSACTION,
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
        ], "optional": False, "name": f"{name}.Envelope", "version": 2}
        key_schema = {"type": "struct", "fields": [_ROW_FIELDS[0]], "optional": False, "name": f"{name}.Key"}
        self._value_prefix = b'{"schema":' + _compact(value_schema) + b',"payload":'
        self._key_prefix = b'{"schema":' + _compact(key_schema) + b',"payload":'
        self._prefix, self._database, self._table = prefix, database, table
        self._encode = msgspec.json.Encoder().encode

    def key(self, event_id: int) -> bytes:
        return self._key_prefix + b'{"event_id":%d}}' % event_id

    def value(self, seq: int, op: str, row: Row, *, snapshot: str = "false") -> bytes:
        """Event number ``seq`` (its lsn, txId and times grow with it): ``op`` on ``row`` (the new image; for a
        delete, the row whose key goes)."""
        ts_ms = _T0_MS + seq
        lsn = _LSN0 + 64 * seq
        image: dict[str, Any] = dict.fromkeys(_COLUMNS)
        if op == "d":
            image["event_id"] = row["event_id"]
            before, after = image, None
        else:
            image.update(row)
            image["amount"] = decimal_base64(str(row["amount"]))
            before, after = None, image
        payload = {
            "before": before, "after": after,
            "source": {"version": _CONNECTOR_VERSION, "connector": "postgresql", "name": self._prefix,
                       "ts_ms": ts_ms, "snapshot": snapshot, "db": self._database,
                       "sequence": f'["{lsn - 64}","{lsn}"]', "ts_us": ts_ms * 1000, "ts_ns": ts_ms * 1_000_000,
                       "schema": "public", "table": self._table, "txId": 20_000 + seq, "lsn": lsn, "xmin": None,
                       "origin": None, "origin_lsn": None},
            "transaction": None, "op": op, "ts_ms": ts_ms + 40, "ts_us": (ts_ms + 40) * 1000,
            "ts_ns": (ts_ms + 40) * 1_000_000}
        return self._value_prefix + self._encode(payload) + b"}"
