"""One case per PostgreSQL type as Debezium's PostgreSQL connector encodes it (wire values taken from real
connector output, see tests/fixtures/debezium), decoded twice: with the JSON converter's schema envelope (the
Connect logical type decides) and without it (the target column's PostgreSQL type decides)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from kapow.formats.debezium import ChangeKind, decode_change

MAX = 1 << 20

# (case id, PostgreSQL type, Connect field schema, wire value, expected value in the row)
CASES: list[tuple[str, str, dict[str, Any], Any, Any]] = [
    ("smallint", "smallint", {"type": "int16"}, -32768, -32768),
    ("bigint-max", "bigint", {"type": "int64"}, 9223372036854775807, 9223372036854775807),
    ("boolean", "boolean", {"type": "boolean"}, False, False),
    ("text-unicode", "text", {"type": "string"}, "😀 ü\t\"q\" \\", "😀 ü\t\"q\" \\"),
    ("double-nan", "double precision", {"type": "double"}, "NaN", "NaN"),
    ("uuid", "uuid", {"type": "string", "name": "io.debezium.data.Uuid"}, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
     "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("enum", "cdc_mood", {"type": "string", "name": "io.debezium.data.Enum", "parameters": {"allowed": "a,b"}},
     "b", "b"),
    ("inet", "inet", {"type": "string"}, "2001:db8::1/64", "2001:db8::1/64"),
    ("xml", "xml", {"type": "string", "name": "io.debezium.data.Xml"}, "<a>ü</a>", "<a>ü</a>"),
    ("date", "date", {"type": "int32", "name": "io.debezium.time.Date"}, 18262, "2020-01-01"),
    ("date-epoch-minus-1", "date", {"type": "int32", "name": "io.debezium.time.Date"}, -1, "1969-12-31"),
    ("date-bc", "date", {"type": "int32", "name": "io.debezium.time.Date"}, -735160, "0044-03-15 BC"),
    ("date-max", "date", {"type": "int32", "name": "io.debezium.time.Date"}, 2145042905, "5874897-12-31"),
    ("date-infinity", "date", {"type": "int32", "name": "io.debezium.time.Date"}, -622191234, "infinity"),
    ("date-minus-infinity", "date", {"type": "int32", "name": "io.debezium.time.Date"}, -2147472691, "-infinity"),
    ("timestamp", "timestamp without time zone", {"type": "int64", "name": "io.debezium.time.MicroTimestamp"},
     1577872800500000, "2020-01-01T10:00:00.500000"),
    ("timestamp-before-epoch", "timestamp without time zone",
     {"type": "int64", "name": "io.debezium.time.MicroTimestamp"}, -1, "1969-12-31T23:59:59.999999"),
    ("timestamp-bc", "timestamp without time zone", {"type": "int64", "name": "io.debezium.time.MicroTimestamp"},
     -63517788000000000 + 500000, "0044-03-15T10:00:00.500000 BC"),
    ("timestamp-year-100000", "timestamp without time zone",
     {"type": "int64", "name": "io.debezium.time.MicroTimestamp"}, 3093527980800000000, "100000-01-01T00:00:00"),
    ("timestamp-infinity", "timestamp without time zone",
     {"type": "int64", "name": "io.debezium.time.MicroTimestamp"}, 9223372036825200000, "infinity"),
    ("timestamp3", "timestamp(3) without time zone", {"type": "int64", "name": "io.debezium.time.Timestamp"},
     1577836800123, "2020-01-01T00:00:00.123000"),
    ("timestamp3-minus-infinity", "timestamp(3) without time zone",
     {"type": "int64", "name": "io.debezium.time.Timestamp"}, -9223372036832400, "-infinity"),
    ("timestamptz", "timestamp with time zone", {"type": "string", "name": "io.debezium.time.ZonedTimestamp"},
     "2021-06-01T10:34:56.789012Z", "2021-06-01T10:34:56.789012Z"),
    ("timestamptz-year-10000", "timestamp with time zone",
     {"type": "string", "name": "io.debezium.time.ZonedTimestamp"}, "+10000-01-01T00:00:00.000000Z",
     "10000-01-01T00:00:00.000000Z"),
    ("timestamptz-bc", "timestamp with time zone", {"type": "string", "name": "io.debezium.time.ZonedTimestamp"},
     "-4712-11-24T00:00:00.000000Z", "4713-11-24T00:00:00.000000Z BC"),
    ("timestamptz-infinity", "timestamp with time zone",
     {"type": "string", "name": "io.debezium.time.ZonedTimestamp"}, "infinity", "infinity"),
    ("time", "time without time zone", {"type": "int64", "name": "io.debezium.time.MicroTime"}, 86399999999,
     "23:59:59.999999"),
    ("time-24h", "time without time zone", {"type": "int64", "name": "io.debezium.time.MicroTime"}, 86400000000,
     "24:00:00"),
    ("time0", "time(0) without time zone", {"type": "int32", "name": "io.debezium.time.Time"}, 45296000,
     "12:34:56"),
    ("time3", "time(3) without time zone", {"type": "int32", "name": "io.debezium.time.Time"}, 36000123,
     "10:00:00.123000"),
    ("timetz", "time with time zone", {"type": "string", "name": "io.debezium.time.ZonedTime"}, "13:30:00.12Z",
     "13:30:00.12Z"),
    ("interval", "interval", {"type": "int64", "name": "io.debezium.time.MicroDuration"}, -86401000000,
     "-86401000000 microseconds"),
    ("interval-iso", "interval", {"type": "string", "name": "io.debezium.time.Interval"}, "P1Y2M3DT4H5M6.789S",
     "P1Y2M3DT4H5M6.789S"),
    ("numeric-scaled", "numeric(20,5)",
     {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "5"}},
     "/1SrVnMU4c4n", "-123456789012345.12345"),
    ("numeric-scaled-small", "numeric(20,5)",
     {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "5"}},
     "/w==", "-0.00001"),
    ("numeric-any", "numeric", {"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"},
     {"scale": 31, "value": "Dw=="}, "0.0000000000000000000000000000015"),
    ("numeric-any-big", "numeric", {"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"},
     {"scale": 21, "value": "VHj54iCtsl5NIYCMzbfPb+QOdmw1"},
     "123456789012345678901234567890.123456789012345678901"),
    ("numeric-any-zero", "numeric", {"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"},
     {"scale": 0, "value": "AA=="}, "0"),
    ("money", "money",
     {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}},
     "BNI=", "12.34"),
    ("bytea", "bytea", {"type": "bytes"}, "3q2+7w==", "\\xdeadbeef"),
    ("bytea-empty", "bytea", {"type": "bytes"}, "", "\\x"),
    ("bit8", "bit(8)", {"type": "bytes", "name": "io.debezium.data.Bits", "parameters": {"length": "8"}}, "oQ==",
     "10100001"),
    ("bit16", "bit(16)", {"type": "bytes", "name": "io.debezium.data.Bits", "parameters": {"length": "16"}},
     "AgE=", "0000000100000010"),
    ("point", "point", {"type": "struct", "name": "io.debezium.data.geometry.Point"},
     {"x": 1.5, "y": 2.0, "wkb": "AQEAAAAAAAAAAAD4PwAAAAAAAABA", "srid": None}, "(1.5,2.0)"),
    ("int-array", "integer[]", {"type": "array", "items": {"type": "int32"}}, [1, None, -3], [1, None, -3]),
    ("text-array", "text[]", {"type": "array", "items": {"type": "string"}}, ["a b", None, '"'], ["a b", None, '"']),
    ("date-array", "date[]", {"type": "array", "items": {"type": "int32", "name": "io.debezium.time.Date"}},
     [18262, None, -25567], ["2020-01-01", None, "1900-01-01"]),
    ("numeric-array", "numeric[]",
     {"type": "array", "items": {"type": "struct", "name": "io.debezium.data.VariableScaleDecimal"}},
     [{"scale": 1, "value": "Dw=="}, None], ["1.5", None]),
    ("timestamp-array-2d", "timestamp without time zone[]",
     {"type": "array", "items": {"type": "int64", "name": "io.debezium.time.MicroTimestamp"}},
     [[0, 1], [None, 2]],
     [["1970-01-01T00:00:00", "1970-01-01T00:00:00.000001"], [None, "1970-01-01T00:00:00.000002"]]),
    ("jsonb-array", "jsonb[]", {"type": "array", "items": {"type": "string", "name": "io.debezium.data.Json"}},
     ['{"a": 1}', "[2]"], [{"a": 1}, [2]]),
    ("jsonb", "jsonb", {"type": "string", "name": "io.debezium.data.Json"}, '{"a": {"c": null}, "b": 1}',
     {"a": {"c": None}, "b": 1}),
]


def envelope_event(column: str, schema: dict[str, Any], value: Any, op: str = "c") -> bytes:
    row_schema = {"type": "struct", "name": "t.Value", "optional": True,
                  "fields": [{"field": "id", "type": "int32"}, {"field": column, "optional": True, **schema}]}
    return msgspec.json.encode({
        "schema": {"type": "struct", "name": "t.Envelope", "fields": [
            {**row_schema, "field": "before"}, {**row_schema, "field": "after"},
            {"field": "op", "type": "string"}]},
        "payload": {"before": None, "after": {"id": 1, column: value}, "op": op,
                    "source": {"lsn": 42, "ts_ms": 7}},
    })


def bare_event(column: str, value: Any, op: str = "c") -> bytes:
    return msgspec.json.encode({"before": None, "after": {"id": 1, column: value}, "op": op,
                                "source": {"lsn": 42, "ts_ms": 7}})


def row_of(value: bytes, column_types: dict[str, str] | None = None) -> dict[str, Any]:
    change = decode_change(value, None, column_types=column_types, max_bytes=MAX, max_depth=32)
    assert change.kind is ChangeKind.UPSERT and change.row is not None
    assert (change.lsn, change.ts_ms) == (42, 7)
    return msgspec.json.decode(change.row)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("pg_type", "schema", "wire", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_with_schema_the_connect_type_decides(pg_type: str, schema: dict[str, Any], wire: Any, expected: Any) -> None:
    assert row_of(envelope_event("c", schema, wire))["c"] == expected


@pytest.mark.parametrize(("pg_type", "schema", "wire", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_without_schema_the_column_type_decides(pg_type: str, schema: dict[str, Any], wire: Any, expected: Any) -> None:
    assert row_of(bare_event("c", wire), {"id": "integer", "c": pg_type})["c"] == expected


def test_bit1_is_a_boolean_on_the_wire_and_needs_the_column_type() -> None:
    boolean = {"type": "boolean"}
    assert row_of(envelope_event("c", boolean, True), {"c": "bit(1)"})["c"] == "1"
    assert row_of(bare_event("c", False), {"c": "bit(1)"})["c"] == "0"
    assert row_of(envelope_event("c", boolean, True))["c"] is True  # a boolean column, then


def test_bit_varying_is_not_padded_when_the_column_says_so() -> None:
    bits = {"type": "bytes", "name": "io.debezium.data.Bits", "parameters": {"length": "16"}}
    assert row_of(envelope_event("c", bits, "BQ=="))["c"] == "0000000000000101"
    assert row_of(envelope_event("c", bits, "BQ=="), {"c": "bit varying(16)"})["c"] == "101"
    assert row_of(bare_event("c", "BQ=="), {"c": "bit varying(16)"})["c"] == "101"


def test_json_keeps_its_text_byte_for_byte() -> None:
    text = '{"b": 1,  "a": [1, 2.50, {"c": null}], "ü": "😀", "big": 123456789012345678901234567890}'
    json_schema = {"type": "string", "name": "io.debezium.data.Json"}
    for event, types in ((envelope_event("c", json_schema, text), None), (bare_event("c", text), {"c": "json"})):
        change = decode_change(event, None, column_types=types, max_bytes=MAX, max_depth=32)
        assert change.row is not None and b'"c":' + text.encode() + b"}" in change.row


def test_numbers_are_never_routed_through_a_float() -> None:
    for literal in ("3.4028235E38", "1.7976931348623157e308", "0.1000000000000000000001", "1e400",
                    "123456789012345678901234567890", "-0.0"):
        event = b'{"op":"c","after":{"id":1,"c":' + literal.encode() + b"}}"
        change = decode_change(event, None, max_bytes=MAX, max_depth=32)
        assert change.row is not None
        written = change.row.split(b'"c":')[1].rstrip(b"}").decode()
        assert Decimal(written) == Decimal(literal) and Decimal(written).as_tuple() == Decimal(literal).as_tuple()


def test_time_precision_of_the_column_picks_the_unit_without_schema() -> None:
    # adaptive: timestamp(0..3) is milliseconds, timestamp(4..6) microseconds
    assert row_of(bare_event("c", 1000), {"c": "timestamp(3) without time zone"})["c"] == "1970-01-01T00:00:01"
    assert row_of(bare_event("c", 1000), {"c": "timestamp(6) without time zone"})["c"] == "1970-01-01T00:00:00.001000"
    assert row_of(bare_event("c", 1000), {"c": "time(2) without time zone"})["c"] == "00:00:01"
    assert row_of(bare_event("c", 1000), {"c": "time without time zone"})["c"] == "00:00:00.001000"


def test_text_modes_pass_through_without_schema() -> None:
    # decimal.handling.mode=string, time.precision.mode=isostring-like text, interval.handling.mode=string
    assert row_of(bare_event("c", "12.50"), {"c": "numeric(10,2)"})["c"] == "12.50"
    assert row_of(bare_event("c", "-1.5e-3"), {"c": "numeric"})["c"] == "-1.5e-3"
    assert row_of(bare_event("c", "2020-01-01"), {"c": "date"})["c"] == "2020-01-01"
    assert row_of(bare_event("c", "P1M"), {"c": "interval"})["c"] == "P1M"


def test_nanosecond_types() -> None:
    nano_ts = {"type": "int64", "name": "io.debezium.time.NanoTimestamp"}
    nano_t = {"type": "int64", "name": "io.debezium.time.NanoTime"}
    assert row_of(envelope_event("c", nano_ts, 1_500_000_123))["c"] == "1970-01-01T00:00:01.500000123"
    assert row_of(envelope_event("c", nano_ts, 2_000_000_000))["c"] == "1970-01-01T00:00:02"
    assert row_of(envelope_event("c", nano_t, 1_000_000_001))["c"] == "00:00:01.000000001"
