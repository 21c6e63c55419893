"""The change-event decoder: operations, tombstones, keys, TOAST placeholders, every malformed input (and a fuzz
proving nothing but PacketError escapes), and real events captured from Debezium 3.6.1 (tests/fixtures/debezium,
written by tests/integration/test_debezium_capture.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kapow.errors import ErrorCode, PacketError
from kapow.formats.debezium import (
    BAD_CHANGE_EVENT,
    UNAVAILABLE,
    Change,
    ChangeDecoder,
    ChangeKind,
    decode_change,
)
from tests.cdc import source

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"
COLUMN_TYPES: dict[str, str] = json.loads((FIXTURES / "column-types.json").read_text())
MAX = 1 << 20


def fixture_events(mode: str) -> dict[str, tuple[bytes | None, bytes | None]]:
    """name -> (key, value) of the real events saved in ``events-<mode>.jsonl``."""
    out = {}
    for line in (FIXTURES / f"events-{mode}.jsonl").read_text().splitlines():
        e = json.loads(line)
        out[e["name"]] = (e["key"] and e["key"].encode(), e["value"] and e["value"].encode())
    return out


WITH = fixture_events("with-schema")
WITHOUT = fixture_events("without-schema")


def decode(value: bytes | None, key: bytes | None = None, **kw: Any) -> Change:
    kw.setdefault("max_bytes", MAX)
    kw.setdefault("max_depth", 32)
    return decode_change(value, key, **kw)


def row(change: Change) -> dict[str, Any]:
    assert change.row is not None
    return msgspec.json.decode(change.row)  # type: ignore[no-any-return]


def failure(value: bytes | None, key: bytes | None = None, **kw: Any) -> tuple[ErrorCode, str]:
    with pytest.raises(PacketError) as info:
        decode(value, key, **kw)
    return info.value.failure.code, info.value.failure.message


def bare(op: str | None, before: Any = None, after: Any = None, **extra: Any) -> bytes:
    doc: dict[str, Any] = {"before": before, "after": after, "source": {"lsn": 100, "ts_ms": 5}, **extra}
    if op is not None:
        doc["op"] = op
    return msgspec.json.encode(doc)


# ---------------------------------------------------------------- operations


@pytest.mark.parametrize("op", ["c", "r", "u"])
def test_create_read_update_upsert_the_after_row(op: str) -> None:
    change = decode(bare(op, before={"id": 1, "a": "old"}, after={"id": 1, "a": "new"}))
    assert (change.kind, row(change), change.lsn, change.ts_ms) == (ChangeKind.UPSERT, {"id": 1, "a": "new"}, 100, 5)


def test_delete_keys_by_the_non_null_columns_of_before() -> None:
    # REPLICA IDENTITY DEFAULT: only the key is set in before
    change = decode(bare("d", before={"id": 7, "a": None, "b": None}))
    assert (change.kind, row(change), change.lsn) == (ChangeKind.DELETE, {"id": 7}, 100)


def test_delete_without_before_keys_by_the_record_key() -> None:
    assert row(decode(bare("d"), b'{"id": 7}')) == {"id": 7}
    envelope_key = msgspec.json.encode({
        "schema": {"type": "struct", "fields": [{"field": "day", "type": "int32", "name": "io.debezium.time.Date"}]},
        "payload": {"day": 18262}})
    assert row(decode(bare("d"), envelope_key)) == {"day": "2020-01-01"}  # the key's own schema converts it
    assert row(decode(bare("d"), b'{"day": 18262}', column_types={"day": "date"})) == {"day": "2020-01-01"}


def test_delete_with_nothing_to_key_by_is_refused() -> None:
    assert failure(bare("d"))[0] is BAD_CHANGE_EVENT
    assert failure(bare("d", before={"id": None}))[0] is BAD_CHANGE_EVENT
    assert failure(bare("d"), b"[1]")[0] is BAD_CHANGE_EVENT
    assert failure(bare("d"), b"{}")[0] is BAD_CHANGE_EVENT
    assert failure(bare("d"), b"{oops")[0] is ErrorCode.NOT_JSON


@pytest.mark.parametrize(("value", "reason"), [
    (None, "tombstone"),
    (b'{"schema": null, "payload": null}', "tombstone"),
    (bare("t"), "truncate"),
    (msgspec.json.encode({"op": "m", "source": {"lsn": 3}, "message": {"prefix": "p", "content": "eA=="}}),
     "message"),
])
def test_tombstones_truncates_and_messages_are_skipped_with_a_reason(value: bytes | None, reason: str) -> None:
    change = decode(value)
    assert (change.kind, change.row, change.reason) == (ChangeKind.SKIP, None, reason)


def test_unchanged_toasted_columns_are_left_out_so_that_an_upsert_keeps_them() -> None:
    after = {"id": 1, "big": UNAVAILABLE, "blob": "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==", "arr": [UNAVAILABLE],
             "n": 2, "text_like": UNAVAILABLE + "!"}
    assert row(decode(bare("u", after=after), column_types={"blob": "bytea"})) == {
        "id": 1, "n": 2, "text_like": UNAVAILABLE + "!"}


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(("value", "code"), [
    (b"", ErrorCode.NOT_JSON),
    (b"{", ErrorCode.NOT_JSON),
    (b'{"op": "c", "after": {"a": "\xff"}}', ErrorCode.NOT_JSON),  # not UTF-8
    (b'{"op": "c", "after": {"a": "\\ud800"}}', ErrorCode.NOT_JSON),  # lone surrogate
    (b"[]", BAD_CHANGE_EVENT),
    (b"42", BAD_CHANGE_EVENT),
    (b'{"a": 1}', BAD_CHANGE_EVENT),  # JSON, but no op
    (b'{"op": "x", "after": {}}', BAD_CHANGE_EVENT),
    (b'{"op": 1}', BAD_CHANGE_EVENT),
    (b'{"op": "c"}', BAD_CHANGE_EVENT),  # no after
    (b'{"op": "c", "after": [1]}', BAD_CHANGE_EVENT),
    (b'{"op": "c", "after": {}, "source": {"lsn": "x"}}', BAD_CHANGE_EVENT),
    (b'{"op": "c", "after": {"a": "nul\\u0000"}}', BAD_CHANGE_EVENT),
    (b'{"op": "c", "after": {"a": ' + b"1" * 5000 + b"}}", BAD_CHANGE_EVENT),  # a huge integer
    (b'{"schema": {"type": "int32"}, "payload": {"op": "c", "after": {}}}', BAD_CHANGE_EVENT),  # not a struct
    (b'{"schema": [], "payload": {"op": "c", "after": {}}}', BAD_CHANGE_EVENT),
])
def test_malformed_events_raise_packet_errors_with_a_user_code(value: bytes, code: ErrorCode) -> None:
    got, message = failure(value)
    assert got is code and message


def test_a_lone_surrogate_is_named_not_called_truncated() -> None:
    code, message = failure(b'{"op": "c", "after": {"a": "\\ud800"}}')
    assert code is ErrorCode.NOT_JSON and "surrogate" in message and "truncated" not in message, message


def test_nul_escaped_as_text_is_not_a_nul() -> None:
    assert row(decode(b'{"op": "c", "after": {"a": "back\\\\u0000slash"}}')) == {"a": "back\\u0000slash"}


def test_size_is_bounded_before_anything_is_parsed() -> None:
    code, message = failure(b" " * 101, max_bytes=100)
    assert code is ErrorCode.TOO_LARGE and "101" in message
    assert failure(bare("d"), b" " * 101, max_bytes=100)[0] is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("levels", [33, 1_000, 100_000])
def test_deep_nesting_is_refused_never_a_crash(levels: int) -> None:
    deep = b"[" * levels + b"]" * levels
    assert failure(b'{"op": "c", "after": {"a": ' + deep + b"}}")[0] is BAD_CHANGE_EVENT
    as_json_text = msgspec.json.encode(deep.decode())
    code, message = failure(b'{"op": "c", "after": {"a": ' + as_json_text + b"}}", column_types={"a": "jsonb"})
    assert code is BAD_CHANGE_EVENT and "'a'" in message


def test_nesting_within_the_limit_is_fine() -> None:
    nested = b"[" * 31 + b"]" * 31
    assert row(decode(b'{"op": "c", "after": {"a": ' + nested + b"}}"))["a"] is not None


@pytest.mark.parametrize(("pg_type", "wire", "words"), [
    ("numeric", "AQI=", "without its scale"),
    ("timestamp with time zone", 1000, "unit"),
    ("numeric(10,2)", "not base64!", "base64"),
    ("date", [1], "integer"),
    ("time without time zone", 86400000001, "outside one day"),
    ("bytea", "@@@", "base64"),
    ("jsonb", "{not json", "valid JSON"),
    ("bit(4)", "/w==", "more than its length"),
    ("point", "(1,2)", "x and y"),
    ("date[]", 5, "array"),
])
def test_values_that_do_not_fit_their_type_name_the_column_and_the_reason(pg_type: str, wire: Any,
                                                                          words: str) -> None:
    value = bare("c", after={"col": wire})
    code, message = failure(value, column_types={"col": pg_type})
    assert code is BAD_CHANGE_EVENT and "'col'" in message and words in message, message


def test_schema_types_are_checked_too() -> None:
    schema: dict[str, Any] = {"type": "struct", "fields": [
        {"field": "after", "type": "struct", "fields": [
            {"field": "d", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal"}]}]}
    no_scale = msgspec.json.encode({"schema": schema, "payload": {"op": "c", "after": {"d": "AQ=="}}})
    assert "scale" in failure(no_scale)[1]
    schema["fields"][0]["fields"][0] = {"field": "t", "type": "int64", "name": "io.debezium.time.MicroTimestamp"}
    wrong = msgspec.json.encode({"schema": schema, "payload": {"op": "c", "after": {"t": "noon"}}})
    code, message = failure(wrong)
    assert code is BAD_CHANGE_EVENT and "'t'" in message and "integer" in message


# ---------------------------------------------------------------- real Debezium events


def test_real_events_with_and_without_schema_decode_to_the_same_rows() -> None:
    """Two independent paths (Connect logical types vs the column's PostgreSQL type) must agree on every column of
    every real event; only the interval differs, as the capture ran without schema in interval string mode."""
    assert set(WITH) == set(WITHOUT) and len(WITH) >= 8
    with_schema = ChangeDecoder(column_types=COLUMN_TYPES, max_bytes=MAX, max_depth=32)
    without = ChangeDecoder(column_types=COLUMN_TYPES, max_bytes=MAX, max_depth=32)
    for name, (key, value) in WITH.items():
        a = with_schema.decode(value, key)
        b = without.decode(WITHOUT[name][1], WITHOUT[name][0])
        assert (a.kind, a.reason) == (b.kind, b.reason), name
        if a.row is not None:
            ra, rb = row(a), row(b)
            ra.pop("c_interval", None)
            rb.pop("c_interval", None)
            assert ra == rb, name


def test_real_snapshot_of_the_edge_rows_carries_the_sql_literals() -> None:
    decoder = ChangeDecoder(column_types=COLUMN_TYPES, max_bytes=MAX, max_depth=32)
    maxima = row(decoder.decode(WITH["r-3"][1], WITH["r-3"][0]))
    literal = source.EDGE_ROWS[2]
    for column in ("c_numeric", "c_numeric_any", "c_date", "c_time", "c_bytea", "c_text", "c_varchar", "c_uuid",
                   "c_bit", "c_bit1", "c_xml", "c_inet", "c_cidr", "c_enum", "c_range"):
        assert maxima[column] == literal[column], column
    assert maxima["c_bigint"] == 9223372036854775807 and maxima["c_timestamptz"] == "100000-01-01T00:00:00.000000Z"
    assert maxima["c_money"] == "92233720368547758.07" and maxima["c_char"] == "ab   "
    assert maxima["c_timestamp"] == "100000-01-01T00:00:00" and maxima["c_interval"] == "864086399000000 microseconds"
    assert maxima["c_numeric_array"] == ["1.5", "-0.00001", None, "123456789012345678901234567890"]
    assert maxima["c_text_array"] == ["a b", "c,d", None, '"', "", "😀"]
    json_text = row(decoder.decode(WITH["r-3"][1]))  # the json column's own bytes survive
    assert json_text["c_json"] == json.loads(literal["c_json"])
    assert literal["c_json"].encode() in (decoder.decode(WITH["r-3"][1]).row or b"")
    minima = row(decoder.decode(WITH["r-2"][1]))
    assert minima["c_bigint"] == -9223372036854775808 and minima["c_numeric"] == "-999999999999999.99999"
    assert minima["c_bytea"] == "\\x" and minima["c_json"] == [] and minima["c_range"] == "empty"
    specials = row(decoder.decode(WITH["r-4"][1]))
    assert (specials["c_date"], specials["c_timestamp"], specials["c_timestamp3"], specials["c_timestamptz"]) == (
        "infinity", "-infinity", "infinity", "infinity")
    assert (specials["c_real"], specials["c_double"]) == ("NaN", "-Infinity")


def test_real_update_delete_and_tombstone() -> None:
    decoder = ChangeDecoder(column_types=COLUMN_TYPES, max_bytes=MAX, max_depth=32)
    toast = decoder.decode(WITH["u-11"][1], WITH["u-11"][0])
    assert toast.kind is ChangeKind.UPSERT and "c_big" not in row(toast) and row(toast)["c_integer"] == 78
    deleted = decoder.decode(WITH["d-1"][1], WITH["d-1"][0])
    assert (deleted.kind, row(deleted)) == (ChangeKind.DELETE, {"id": 1})
    assert deleted.lsn is not None and deleted.lsn > 0
    assert decoder.decode(WITH["tombstone-1"][1], WITH["tombstone-1"][0]).reason == "tombstone"
    streamed = row(decoder.decode(WITH["c-100001"][1]))
    assert (streamed["c_date"], streamed["c_timestamptz"]) == ("0044-03-15 BC", "4713-11-24T00:00:00.000000Z BC")


def test_the_decoder_recognises_a_repeated_schema_and_follows_a_new_one() -> None:
    decoder = ChangeDecoder(max_bytes=MAX, max_depth=32)
    first = decoder.decode(WITH["r-3"][1])
    again = decoder.decode(WITH["r-3"][1])
    assert first == again
    after = {"field": "after", "type": "struct", "fields": [{"field": "c_date", "type": "string"}]}
    other = msgspec.json.encode({"schema": {"type": "struct", "fields": [after]},
                                 "payload": {"op": "c", "after": {"c_date": "2020-01-01"}}})
    assert row(decoder.decode(other)) == {"c_date": "2020-01-01"}  # the new schema, not the cached one
    assert row(decoder.decode(WITH["r-3"][1]))["c_date"] == "5874897-12-31"


# ---------------------------------------------------------------- fuzz

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
_op = st.sampled_from(["c", "r", "u", "d", "t", "m", "x", ""]) | st.integers()
_events = st.fixed_dictionaries(
    {"op": _op},
    optional={"before": _json | st.dictionaries(st.sampled_from(sorted(COLUMN_TYPES)), _json, max_size=6),
              "after": _json | st.dictionaries(st.sampled_from(sorted(COLUMN_TYPES)), _json, max_size=6),
              "source": _json, "schema": _json, "payload": _json})
_real = st.sampled_from([v for _, v in list(WITH.values()) + list(WITHOUT.values()) if v is not None])


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    value = bytearray(draw(_real))
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(value) - 1))
        value[i] = draw(st.integers(0, 255))
    return bytes(value)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=200) | _events.map(msgspec.json.encode) | _mutated(),
       key=st.none() | st.binary(max_size=40) | _json.map(msgspec.json.encode),
       with_types=st.booleans())
def test_fuzz_nothing_but_packet_error_escapes(value: bytes, key: bytes | None, with_types: bool) -> None:
    try:
        change = decode(value, key, column_types=COLUMN_TYPES if with_types else None, max_depth=8)
    except PacketError as exc:
        assert exc.failure.message
        return
    if change.row is not None:
        assert isinstance(msgspec.json.decode(change.row), dict)


def test_events_of_the_last_schema_skip_its_parse_and_decode_as_a_fresh_decoder_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON converter writes ``{"schema":S,"payload":P}`` byte for byte: once S is known, its 3.5 kB are
    compared, not parsed; the result is the same as a full parse's, and anything else takes the full parse."""
    import kapow.formats.debezium as dbz

    def fresh(value: bytes | None, key: bytes | None) -> Change:
        return ChangeDecoder(column_types=COLUMN_TYPES, max_bytes=MAX, max_depth=32).decode(value, key)

    events = [kv for kv in WITH.values() if kv[1] is not None]
    key, value = events[-1]
    assert value is not None and value.endswith(b"}}")
    odd = {
        "another key after the payload": value[:-1] + b',"extra":1}',
        "a space before the end": value[:-1] + b" }",
        "a null payload": value[: value.index(b'"payload":') + 10] + b"null}",
    }
    expected = [fresh(v, k) for k, v in events]
    expected_odd = {why: fresh(bent, key) for why, bent in odd.items()}
    full_parses: list[int] = []
    real = dbz._TOP

    class Counting:
        def decode(self, raw: bytes) -> Any:
            full_parses.append(len(raw))
            return real.decode(raw)

    monkeypatch.setattr(dbz, "_TOP", Counting())
    decoder = ChangeDecoder(column_types=COLUMN_TYPES, max_bytes=MAX, max_depth=32)
    for _ in range(2):
        assert [decoder.decode(v, k) for k, v in events] == expected
    assert 0 < len(full_parses) < len(events), "every event parsed whole: the schema was never recognised"
    full_parses.clear()
    for _ in range(5):
        assert decoder.decode(value, key) == expected[-1]
    assert full_parses == []
    for why, bent in odd.items():
        assert decoder.decode(bent, key) == expected_odd[why], why
    assert len(full_parses) == len(odd), "each bent event took the full parse"


@pytest.mark.parametrize("events", [WITH, WITHOUT], ids=["with-schema", "without-schema"])
@pytest.mark.parametrize("types", [COLUMN_TYPES, None], ids=["typed", "untyped"])
def test_a_changes_column_names_are_those_of_its_row_and_one_tuple_per_shape(
        events: dict[str, tuple[bytes | None, bytes | None]], types: dict[str, str] | None) -> None:
    from kapow.contract import decode_keys

    decoder = ChangeDecoder(column_types=types, max_bytes=MAX, max_depth=32)
    seen: dict[tuple[str, ...], tuple[str, ...]] = {}
    rows = 0
    for key, value in events.values():
        change = decoder.decode(value, key)
        if change.row is None:
            assert change.keys == ()
            continue
        rows += 1
        assert change.keys == decode_keys(change.row, max_depth=34)  # what the lane used to decode again
        assert seen.setdefault(change.keys, change.keys) is change.keys
    assert rows >= 5


def test_the_schemas_a_decoder_keeps_are_bounded_in_bytes() -> None:
    """A review: 64 schemas each as large as a record were kept a route (up to 64 MB)."""
    from kapow.formats import debezium

    decoder = ChangeDecoder(column_types=COLUMN_TYPES, max_bytes=8 << 20, max_depth=32)
    _key, value = WITH["r-1"]
    assert value is not None
    for i in range(40):  # ever-new schemas of ~300 kB: a field of their own, described at length
        doc = msgspec.json.decode(value)
        doc["schema"]["doc"] = f"{i}:" + "x" * 300_000
        decoder.decode(msgspec.json.encode(doc))
        assert decoder._plans_bytes == sum(map(len, decoder._plans)) <= debezium._SCHEMA_CACHE_BYTES
    huge = msgspec.json.decode(value)
    huge["schema"]["doc"] = "y" * (debezium._SCHEMA_CACHE_BYTES // 8 + 1)
    assert decoder.decode(msgspec.json.encode(huge)).row is not None  # decoded, its schema never kept
    assert decoder._plans_bytes == sum(map(len, decoder._plans))
