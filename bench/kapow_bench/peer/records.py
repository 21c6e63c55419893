"""Rows as the peer reads them: Kafka Connect's JSON converter with ``schemas.enable=true`` (no registry here).

* ``created_at`` is an ``io.debezium.time.ZonedTimestamp`` string (ISO 8601): the sink binds it as a timestamptz
  and keeps the microseconds (Connect's own ``Timestamp`` is int64 milliseconds and would lose them; a plain string
  is bound as varchar, which PostgreSQL refuses for a timestamptz column).
* ``amount`` uses Connect's ``Decimal`` (scale 2): base64 of the unscaled two's-complement integer, exact.
* The key is ``struct{event_id:int64}``, so ``primary.key.mode=record_key`` works (needed for upsert and delete).

The schemas are constant: serialised once, with each payload spliced in, so the producer side of the benchmark is
not dominated by ``json.dumps`` of schemas. The inline schema makes each value ~3 times KaPoW's packet: that is the
price of Connect's JSON without a schema registry, the peer's handicap and not ours.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import string
from typing import Any

from kapow_bench.debezium_events import decimal_base64

KINDS = ("payment", "refund", "chargeback", "fee")
DATA_JSON_BYTES = 170  # the historical rows' ``note`` pads each object's JSON to about this
_BASE_TIME = dt.datetime(2026, 11, 24, 10, 0, 0, tzinfo=dt.UTC)
_NOTE_ALPHABET = string.ascii_letters + string.digits + " "

_FIELDS: dict[str, dict[str, Any]] = {
    "event_id": {"field": "event_id", "type": "int64", "optional": False},
    "account": {"field": "account", "type": "string", "optional": False},
    "kind": {"field": "kind", "type": "string", "optional": False},
    "amount": {"field": "amount", "type": "bytes", "optional": False, "name": "org.apache.kafka.connect.data.Decimal",
               "version": 1, "parameters": {"scale": "2", "connect.decimal.precision": "12"}},
    "currency": {"field": "currency", "type": "string", "optional": False},
    "created_at": {"field": "created_at", "type": "string", "optional": False,
                   "name": "io.debezium.time.ZonedTimestamp", "version": 1},
    "note": {"field": "note", "type": "string", "optional": True},
    "rev": {"field": "rev", "type": "int64", "optional": False},
}
_KEY_SCHEMA: dict[str, Any] = {"type": "struct", "name": "kapow.bench.EventKey", "optional": False,
                               "fields": [_FIELDS["event_id"]]}


def make_rows(n: int, seed: int = 7) -> list[dict[str, object]]:
    """The peer CLI's rows (the first benchmarks' data): event_id 1..n, increasing created_at, ``note`` padded."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(1, n + 1):
        cents = rng.randint(100, 9_999_999)
        created = _BASE_TIME + dt.timedelta(microseconds=i * 1000 + rng.randint(0, 999))
        row: dict[str, object] = {
            "event_id": i, "account": f"acct-{i % 5000:05d}", "kind": KINDS[(i - 1) % len(KINDS)],
            "amount": f"{cents // 100}.{cents % 100:02d}", "currency": "USD",
            "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "note": "",
        }
        pad = DATA_JSON_BYTES - len(json.dumps(row, separators=(",", ":")))
        row["note"] = "".join(rng.choices(_NOTE_ALPHABET, k=max(pad, 0)))
        rows.append(row)
    return rows


class RecordEncoder:
    """Flat rows of the ``events`` shape (with or without ``rev``) as Connect JSON keys and values."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        schema = {"type": "struct", "name": "kapow.bench.Event", "optional": False,
                  "fields": [_FIELDS[c] for c in columns]}
        self.columns = columns
        self._value_prefix = b'{"schema":' + json.dumps(schema, separators=(",", ":")).encode() + b',"payload":'
        self._key_prefix = b'{"schema":' + json.dumps(_KEY_SCHEMA, separators=(",", ":")).encode() + b',"payload":'

    def encode(self, row: dict[str, Any]) -> tuple[bytes, bytes]:
        """(key, value) of one row; columns the row lacks are sent as null."""
        payload = {c: row.get(c) for c in self.columns}
        payload["amount"] = decimal_base64(str(row["amount"]))
        value = self._value_prefix + json.dumps(payload, separators=(",", ":")).encode() + b"}"
        return self._key_prefix + b'{"event_id":%d}}' % int(row["event_id"]), value
