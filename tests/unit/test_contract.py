"""Packet decoding: header filter, envelope shape, data keys, identifiers, limits; hostile input never escapes."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kapow.contract import CONTEXT_VALUE, PacketDecoder, check_identifier, decode_keys, make_packet
from kapow.errors import ErrorClass, ErrorCode, PacketError

DEST = {"type": "postgres", "vanity": "wh", "database": "db", "schema": "public", "table": "t"}


def decoder(**limits: int) -> PacketDecoder:
    return PacketDecoder(**{"max_bytes": 1 << 20, "max_depth": 32, "max_destinations": 16, **limits})


def code_of(value: bytes | None, **limits: int) -> ErrorCode:
    with pytest.raises(PacketError) as err:
        decoder(**limits).decode(value)
    return err.value.failure.code


def test_header_filter() -> None:
    d = decoder()
    assert d.is_pipeline_packet([("context", CONTEXT_VALUE)])
    assert d.is_pipeline_packet([("x", b"1"), ("context", b'{"consumer":{"type":"data_pipeline"},"extra":1}')])
    assert not d.is_pipeline_packet(None)
    assert not d.is_pipeline_packet([])
    assert not d.is_pipeline_packet([("context", b'{"consumer":{"type":"other"}}')])
    assert not d.is_pipeline_packet([("context", b"not json")])
    assert not d.is_pipeline_packet([("context", None)])
    assert not d.is_pipeline_packet([("Context", CONTEXT_VALUE)])
    assert not d.is_pipeline_packet([("context", b'["consumer"]')])


def test_a_context_header_nested_a_thousand_deep_is_foreign_traffic_not_a_crash() -> None:
    deep = b'{"consumer":' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert not decoder().is_pipeline_packet([("context", deep)])
    assert not decoder().is_pipeline_packet([("context", b"[" * 100_000)])


def test_header_cache_is_bounded_in_entries_and_bytes() -> None:
    d = decoder()
    for i in range(5000):
        d.is_pipeline_packet([("context", b'{"consumer":{"type":"x%d"}}' % i)])
    big = b'{"consumer":{"type":"data_pipeline"},"pad":"' + b"x" * 1_000_000 + b'"}'
    assert d.is_pipeline_packet([("context", big)])
    assert len(d._contexts) == 5000 and d._contexts.bytes <= PacketDecoder.CACHE_BYTES
    assert d._contexts.get(big) is None  # a big value is decoded each time, never held


def test_envelope_keeps_data_bytes_exact() -> None:
    raw = b'{"pipeline_context":{"destinations":[' + msgspec.json.encode(DEST) + b']},' \
          b'"data":{"amount": 12345678901234567.89, "s":"a\\\\b", "huge": 1e400}}'
    packet = decoder().decode(raw)
    assert packet.doc == b'{"amount": 12345678901234567.89, "s":"a\\\\b", "huge": 1e400}'
    assert packet.keys == ("amount", "s", "huge")
    assert packet.destinations[0].table == "t"
    assert packet.destinations[0].schema == "public"
    assert packet.destinations[0].mode == "insert"


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
        (make_packet([DEST], {"a": "x"}).replace(b'"x"', b'"\xff"'), ErrorCode.NOT_JSON),  # invalid UTF-8 in data
        (make_packet([{**DEST, "metadata": {"nope": "c"}}], {"a": 1}), ErrorCode.BAD_PACKET),
    ],
)
def test_bad_envelopes(value: bytes | None, code: ErrorCode) -> None:
    assert code_of(value) is code


def test_an_empty_value_is_named_as_such() -> None:
    """A hostile run: an empty value was "value is not UTF-8 JSON: Input data was truncated"."""
    for value, said in ((b"", "packet's value is empty"), (None, "packet has no value")):
        with pytest.raises(PacketError) as err:
            decoder().decode(value)
        assert err.value.failure.message == said


def test_too_large() -> None:
    assert code_of(b" " * 101, max_bytes=100) is ErrorCode.TOO_LARGE


def test_too_many_destinations_is_one_user_error() -> None:
    value = make_packet([{**DEST, "table": f"t{i}"} for i in range(2000)], {"a": 1})
    assert code_of(value) is ErrorCode.TOO_MANY_DESTINATIONS
    assert len(decoder().decode(make_packet([DEST] * 16, {"a": 1})).destinations) == 16


@pytest.mark.parametrize("raw", [b"[1]", b"1", b'"s"', b"{}", b"null"])
def test_data_must_be_a_non_empty_object(raw: bytes) -> None:
    with pytest.raises(PacketError) as err:
        decode_keys(raw, max_depth=32)
    assert err.value.failure.code is ErrorCode.BAD_PACKET


def test_depth_limit() -> None:
    deep = b'{"a":' + b"[" * 40 + b"]" * 40 + b"}"
    with pytest.raises(PacketError, match="nested deeper"):
        decode_keys(deep, max_depth=32)
    assert decode_keys(b'{"a":[[[1]]]}', max_depth=32) == ("a",)
    flat_but_many = b'{"a":[' + b",".join([b"[1]"] * 100) + b"]}"  # many openers, depth 3
    assert decode_keys(flat_but_many, max_depth=32) == ("a",)


@pytest.mark.parametrize("depth", [33, 999, 1000, 5000, 100_000])
def test_data_nested_any_depth_is_a_user_error_never_a_recursion_error(depth: int) -> None:
    value = make_packet([DEST], {"x": 1}).replace(b'{"x":1}', b'{"x":' + b"[" * depth + b"]" * depth + b"}")
    assert code_of(value) is ErrorCode.BAD_PACKET


def test_pipeline_context_nested_deep_is_a_user_error() -> None:
    value = b'{"pipeline_context":' + b"[" * 5000 + b"]" * 5000 + b',"data":{"a":1}}'
    assert code_of(value) is ErrorCode.BAD_PACKET


def test_destination_cache_is_bounded_in_bytes() -> None:
    d = decoder()
    for i in range(50):
        value = make_packet([{**DEST, "vanity": "v" * 1_000_000, "table": f"t{i}"}], {"a": 1})
        d.decode(value)
    assert len(d._destinations) == 0  # each context is a megabyte: decoded each time, never held


def test_the_contexts_of_ten_thousand_tables_stay_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    # the first cache held 2,048 contexts: at 10,000 tables four packets in five decoded theirs again
    d = decoder()
    contexts = [msgspec.json.encode({"destinations": [{**DEST, "table": f"t{i:05d}"}]}) for i in range(10_000)]
    for context in contexts:
        d.destinations(context)
    parsed: list[bytes] = []
    real = d._parse_destinations
    monkeypatch.setattr(d, "_parse_destinations", lambda c: parsed.append(c) or real(c))
    for context in contexts:
        assert d.destinations(context)[0].table == msgspec.json.decode(context)["destinations"][0]["table"]
    assert parsed == []


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
    packet = decoder(max_depth=64).decode(make_packet([DEST], data))
    assert packet.keys == tuple(data)
    assert msgspec.json.decode(packet.doc) == data


def _mutations() -> st.SearchStrategy[bytes]:
    valid = make_packet([DEST], {"id": 1, "v": "x", "n": [1, {"a": 2}]})
    return st.one_of(
        st.binary(max_size=300),
        st.builds(lambda i, b: valid[:i] + b + valid[i:], st.integers(0, len(valid)), st.binary(max_size=8)),
        st.builds(lambda i: valid[:i], st.integers(0, len(valid))),
        st.builds(lambda n: valid.replace(b'"x"', b"[" * n + b"]" * n), st.integers(0, 3000)),
        st.builds(lambda s: valid.replace(b'"x"', msgspec.json.encode(s)), st.text(max_size=50)),
    )


@settings(max_examples=400)
@given(_mutations())
def test_decoding_never_raises_anything_but_a_user_packet_error(value: bytes) -> None:
    d = decoder()
    try:
        packet = d.decode(value)
    except PacketError as exc:
        assert exc.failure.code.error_class is ErrorClass.USER
    else:  # what passes is a valid UTF-8 JSON object with at least one key, bounded in depth
        assert packet.keys
        assert isinstance(msgspec.json.decode(packet.doc), dict)


def test_huge_numbers_pass_through_raw_even_in_deep_packets() -> None:
    value = make_packet([DEST], {"n": 0}).replace(b'{"n":0}', b'{"n": 1e400, "deep": ' + b"[" * 20 + b"]" * 20
                                                   + b', "more": [' + b",".join([b"[[]]"] * 10) + b"]}")
    packet = decoder().decode(value)
    assert packet.keys == ("n", "deep", "more")
    assert b"1e400" in packet.doc


def _hostile_data() -> st.SearchStrategy[bytes]:
    """What a client may put where ``data`` goes: broken JSON, non-objects, deep nesting, bad UTF-8, huge numbers."""
    valid = msgspec.json.encode({"id": 1, "v": "x", "n": [1, {"a": 2}]})
    return st.one_of(
        st.binary(min_size=1, max_size=200).filter(lambda b: b.strip()[:1] not in (b"", b",", b"}", b"]")),
        st.builds(lambda i, b: valid[:i] + b + valid[i:], st.integers(1, len(valid) - 1), st.binary(min_size=1,
                                                                                                      max_size=6)),
        st.builds(lambda n: b'{"a":' + b"[" * n + b"]" * n + b"}", st.integers(0, 200)),
        st.builds(lambda s: msgspec.json.encode({s: 1}), st.text(max_size=30)),
        st.builds(lambda d: b'{"n": ' + d.encode() + b"}",
                  st.from_regex(r"-?[1-9][0-9]{0,400}(\.[0-9]{1,50})?(e[0-9]{1,4})?", fullmatch=True)),
    )


@settings(max_examples=300)
@given(_hostile_data())
def test_hostile_data_in_a_valid_envelope_is_a_user_error_or_kept_exactly(data: bytes) -> None:
    """Every example reaches the decoding of ``data`` (the envelope around it is valid)."""
    value = b'{"pipeline_context":{"destinations":[' + msgspec.json.encode(DEST) + b']},"data":' + data + b"}"
    try:
        packet = decoder().decode(value)
    except PacketError as exc:
        assert exc.failure.code in (ErrorCode.NOT_JSON, ErrorCode.BAD_PACKET), exc.failure
    else:
        assert packet.doc == data.strip() or packet.doc == data  # byte for byte, as the client sent it
        assert packet.keys == tuple(msgspec.json.decode(packet.doc, type=dict[str, msgspec.Raw]))


@pytest.mark.parametrize("destinations", [1, 4, 14])
def test_a_cached_context_costs_no_more_memory_than_the_cache_counts(destinations: int) -> None:
    # the cache's bound is on what it counts (entry_cost), so the count must cover the Python objects really held:
    # a decoded context is ~7x its JSON bytes; a hostile stream of ever-new 2 KB contexts must not hold more
    import gc
    import tracemalloc

    from kapow.bytecache import entry_cost

    contexts = [msgspec.json.encode({"destinations": [{**DEST, "table": f"t{i}_{k}"} for k in range(destinations)]})
                for i in range(500)]
    d = decoder()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for context in contexts:
            d.destinations(context)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(d._destinations) == 500
    assert held <= sum(entry_cost(c) for c in contexts), (held, sum(entry_cost(c) for c in contexts))


# PacketDecoder.keys reads flat documents with a faster decoder and falls back to decode_keys for the rest: the
# two must agree on every document, keys and errors alike, in any order of flat and nested documents.
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                          max_size=3), max_leaves=12)
_odd_bytes = st.sampled_from([b"{}", b"[]", b'{"a": 1e999}', b'{"a": -1e-999}', b'{"a": "\\ud800"}', b'{"a": "\xff"}',
                              b'{"\xff": 1}', b'{"a": 1, "a": [2]}', b'{"a": NaN}', b'{"a": 1', b'{"a": "[[[[{{{{"}',
                              b'{"a": 123456789012345678901234567890}', b'"text"', b"1", b'{"a": {"b": {"c": {}}}}',
                              b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}"])


def _outcome(read: object, doc: bytes) -> object:
    try:
        return read(doc)  # type: ignore[operator]
    except PacketError as exc:
        return (exc.failure.code, exc.failure.message)


@settings(max_examples=300)
@given(st.lists(st.dictionaries(st.text(max_size=6), _json, max_size=5).map(msgspec.json.encode)
                | _odd_bytes, min_size=1, max_size=40))
def test_the_flat_path_gives_the_keys_and_errors_of_the_general_one(docs: list[bytes]) -> None:
    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=8, max_destinations=10)
    decoder.FLAT_RETRY = 2  # type: ignore[misc]  # switch between the paths often within one example
    for doc in docs:
        assert _outcome(decoder.keys, doc) == _outcome(lambda d: decode_keys(d, max_depth=8), doc), doc


def test_a_nested_document_sends_the_next_ones_the_general_way_for_a_while_then_flat_again() -> None:
    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=8, max_destinations=10)
    assert decoder.keys(b'{"a": 1, "b": "x"}') == ("a", "b")
    assert decoder._skip_flat == 0
    assert decoder.keys(b'{"a": [1], "b": {"c": 2}}') == ("a", "b")
    assert decoder._skip_flat == PacketDecoder.FLAT_RETRY
    for _ in range(PacketDecoder.FLAT_RETRY):
        assert decoder.keys(b'{"a": 1}') == ("a",)
    assert decoder._skip_flat == 0
    with pytest.raises(PacketError, match="deeper than 8"):
        decoder.keys(b'{"a": ' + b"[" * 9 + b"]" * 9 + b"}")
    with pytest.raises(PacketError, match="not UTF-8"):
        decoder.keys(b'{"a": "\xff"}')


def test_sets_of_column_names_are_interned_within_a_bound_in_count_and_bytes() -> None:
    from kapow.contract import INTERNED_NAMES_BYTES, KeySets

    keysets = KeySets(max_sets=2)
    a = keysets.intern(("id", "name"))
    assert keysets.intern(tuple(["id", "name"])) is a  # an equal tuple comes back as the first one
    huge = tuple(f"c{i:06d}" for i in range(INTERNED_NAMES_BYTES // 7 + 1))  # over the bytes: never kept
    assert keysets.intern(huge) is huge and keysets.intern(tuple(list(huge))) is not huge
    b = keysets.intern(("b",))
    c = ("c",)
    assert keysets.intern(c) is c and keysets.intern(tuple(["c"])) is not c  # over the count: never kept
    assert len(keysets) == 2 and keysets.intern(("b",)) is b


def test_interned_names_are_bounded_in_bytes_in_all() -> None:
    """A review: 4,096 sets of 4 kB of one-letter names pinned 176 MB, bounded by number alone."""
    from kapow.contract import KeySets

    keysets = KeySets(max_sets=4096, max_bytes=1_000_000)
    for i in range(4096):
        keysets.intern(tuple(f"{i}_{j}" for j in range(400)))
    assert keysets.bytes <= 1_000_000 and 20 <= len(keysets) < 4096
    first = keysets.intern(tuple(f"0_{j}" for j in range(400)))
    assert keysets.intern(tuple(f"0_{j}" for j in range(400))) is first  # the first ones stay interned


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\uDBFF", b"\\ud83d\\u0041", b"\\ud800\\n", b"\\ud800\", \"v\": \"1"])
def test_a_lone_surrogate_is_named_not_called_truncated(escape: bytes) -> None:
    # msgspec says "Input data was truncated" for a high surrogate without its low one, or "unexpected end of hex
    # escape" when a backslash follows (a helper's run): a client then looks for a cut packet that is not there
    doc = b'{"id": 1, "name": "x' + escape + b'"}'
    with pytest.raises(PacketError) as raised:
        decode_keys(doc, max_depth=64)
    message = str(raised.value)
    assert "surrogate" in message and "truncated" not in message, message
    with pytest.raises(PacketError) as whole:  # the whole packet read: the same
        decoder().split_raw(make_packet([{"vanity": "v", "database": "d", "table": "t"}], {}).replace(
            b'"data":{}', b'"data":' + doc))
    assert whole.value.failure.code is ErrorCode.NOT_JSON and "surrogate" in str(whole.value), whole.value
    with pytest.raises(PacketError) as cut:
        decode_keys(b'{"id": 1, "name": "\\ud83d\\ude00', max_depth=64)  # truly cut: still says so
    assert "truncated" in str(cut.value)


@pytest.mark.parametrize(("value", "code"), [(b"[1,2", "not_json"), (b"[" * 99_000, "not_json"),
                                             (b"[" * 99_000 + b"]" * 99_000, "bad_packet"), (b"[1,2]", "bad_packet"),
                                             (b"123", "bad_packet"), (b'{"a": 1', "not_json")])
def test_a_value_cut_short_is_not_json_even_where_its_first_byte_is_the_wrong_shape(value: bytes, code: str) -> None:
    """A helper's run: 99,000 "[" with no "]" was bad_packet "Expected object, got array"; it is no JSON at all."""
    with pytest.raises(PacketError) as raised:
        decoder().split_raw(value)
    assert raised.value.failure.code.value == code, raised.value.failure.message
