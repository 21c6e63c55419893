"""Packet decoding: header filter, envelope shape, data, identifiers."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kapow.contract import (
    CONTEXT_VALUE,
    check_identifier,
    decode_data,
    decode_envelope,
    is_pipeline_packet,
    make_packet,
)
from kapow.errors import ErrorCode, PacketError

DEST = {"type": "postgres", "vanity": "wh", "database": "db", "schema": "public", "table": "t"}


def test_header_filter() -> None:
    assert is_pipeline_packet([("context", CONTEXT_VALUE)])
    assert is_pipeline_packet([("x", b"1"), ("context", b'{"consumer":{"type":"data_pipeline"},"extra":1}')])
    assert not is_pipeline_packet(None)
    assert not is_pipeline_packet([])
    assert not is_pipeline_packet([("context", b'{"consumer":{"type":"other"}}')])
    assert not is_pipeline_packet([("context", b"not json")])
    assert not is_pipeline_packet([("context", None)])
    assert not is_pipeline_packet([("Context", CONTEXT_VALUE)])
    assert not is_pipeline_packet([("context", b'["consumer"]')])


def test_envelope_keeps_data_bytes_exact() -> None:
    raw = b'{"pipeline_context":{"destinations":[' + msgspec.json.encode(DEST) + b']},' \
          b'"data":{"amount": 12345678901234567.89, "s":"a\\\\b"}}'
    destinations, data = decode_envelope(raw, max_bytes=1 << 20)
    assert data == b'{"amount": 12345678901234567.89, "s":"a\\\\b"}'
    assert destinations[0].table == "t"
    assert destinations[0].schema == "public"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, ErrorCode.NOT_JSON),
        (b"", ErrorCode.NOT_JSON),
        (b"{", ErrorCode.NOT_JSON),
        (b"\xff\xfe", ErrorCode.NOT_JSON),
        (b"[]", ErrorCode.BAD_PACKET),
        (b"{}", ErrorCode.BAD_PACKET),
        (b'{"data":{}}', ErrorCode.BAD_PACKET),
        (b'{"pipeline_context":{"destinations":[]},"data":{"a":1}}', ErrorCode.BAD_PACKET),
        (b'{"pipeline_context":{"destinations":[{"vanity":"wh"}]},"data":{"a":1}}', ErrorCode.BAD_PACKET),
        (b'{"pipeline_context":{"destinations":"x"},"data":{"a":1}}', ErrorCode.BAD_PACKET),
        (b'{"pipeline_context":{"destinations":[{"vanity":1,"database":"d","table":"t"}]},"data":{}}',
         ErrorCode.BAD_PACKET),
    ],
)
def test_bad_envelopes(value: bytes | None, code: ErrorCode) -> None:
    with pytest.raises(PacketError) as err:
        decode_envelope(value, max_bytes=1 << 20)
    assert err.value.failure.code is code


def test_too_large() -> None:
    with pytest.raises(PacketError) as err:
        decode_envelope(b" " * 101, max_bytes=100)
    assert err.value.failure.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("raw", [b"[1]", b"1", b'"s"', b"{}", b"null"])
def test_data_must_be_a_non_empty_object(raw: bytes) -> None:
    with pytest.raises(PacketError) as err:
        decode_data(raw, max_depth=32)
    assert err.value.failure.code is ErrorCode.BAD_PACKET


def test_depth_limit() -> None:
    deep = b'{"a":' + b"[" * 40 + b"]" * 40 + b"}"
    with pytest.raises(PacketError, match="nested deeper"):
        decode_data(deep, max_depth=32)
    assert decode_data(b'{"a":[[[1]]]}', max_depth=32) == {"a": [[[1]]]}


@pytest.mark.parametrize("name", ['x"; DROP TABLE t; --', "a b", "", "1abc", "a" * 64, "tab\tle", "é"])
def test_hostile_identifiers_refused(name: str) -> None:
    with pytest.raises(PacketError):
        check_identifier("table", name)


@pytest.mark.parametrize("name", ["events", "_x", "A1", "a$b", "a" * 63])
def test_plain_identifiers_accepted(name: str) -> None:
    check_identifier("table", name)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(min_size=1, max_size=20), json_values, min_size=1, max_size=10))
def test_roundtrip_any_data(data: dict[str, object]) -> None:
    packet = make_packet([DEST], data)
    _, raw = decode_envelope(packet, max_bytes=1 << 24)
    assert decode_data(raw, max_depth=64) == data
    assert msgspec.json.decode(raw) == data


@given(st.binary(max_size=200))
def test_decoding_never_raises_anything_but_packet_error(value: bytes) -> None:
    try:
        _, raw = decode_envelope(value, max_bytes=1 << 20)
        decode_data(raw, max_depth=32)
    except PacketError as exc:
        assert exc.failure.code.error_class.value == "user"
