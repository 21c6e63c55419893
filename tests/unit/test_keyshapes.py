"""Column names read by the previous rows' shape (kapow.keyshapes): the same names and errors as the general way,
whatever the order of shapes, permutations, duplicates, nested values and bad bytes; bounded in builds and memory."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kapow import keyshapes
from kapow.contract import PacketDecoder, decode_keys
from kapow.errors import PacketError
from kapow.keyshapes import KeyShapes

# ("b","a","c"): a permutation; names a Struct cannot have (a quote, a backslash, a control character), and ""
NAMES = [("id",), ("id", "name"), ("a", "b", "c"), ("b", "a", "c"), ("x",), ('q"uote', "b\\s"), ("t\x01", ""),
         ("é", "ü")]


def _outcome(read: Any, doc: bytes) -> object:
    """Keys as a set with their count (a shape gives its names in the order it first saw them), or the error."""
    try:
        keys = read(doc)
    except PacketError as exc:
        return (exc.failure.code, exc.failure.message)
    return (frozenset(keys), len(keys))


def _doc(names: tuple[str, ...], variant: int) -> bytes:
    values: list[Any] = [1, "text", None, True, 2.5, "é"]
    body = {n: values[(i + variant) % len(values)] for i, n in enumerate(names)}
    doc = msgspec.json.encode(body)
    if variant == 7:  # a nested value under a known name
        return doc[:-1] + b',"' + names[0].encode() + b'":[1]}' if names else doc
    if variant == 8:  # a duplicate name
        return doc[:-1] + b',"' + names[0].encode() + b'":3}'
    if variant == 9:  # invalid UTF-8 inside a string value
        return doc[:-1] + b',"zz":"\xff"}'
    if variant == 10:  # one name missing
        return msgspec.json.encode({n: 1 for n in names[1:]}) if len(names) > 1 else b"{}"
    if variant == 11:  # one name more
        return doc[:-1] + b',"extra":1}'
    if variant == 12:  # too deep for the limit
        return b'{"' + names[0].encode() + b'": ' + b"[" * 9 + b"]" * 9 + b"}"
    if variant == 13:  # trailing garbage, then not an object at all
        return doc + b"x"
    if variant == 14:
        return b"[1, 2]"
    return doc


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 14)), min_size=1, max_size=80),
       st.integers(0, 3), st.integers(1, 3))
def test_the_shape_path_gives_the_names_and_errors_of_the_general_one(
        seq: list[tuple[tuple[str, ...], int]], build_every: int, misses: int) -> None:
    saved = (keyshapes.BUILD_EVERY, keyshapes.MISSES, keyshapes.PAUSE, keyshapes.WINDOW)
    keyshapes.BUILD_EVERY, keyshapes.MISSES, keyshapes.PAUSE, keyshapes.WINDOW = build_every, misses, 3, 6
    try:
        decoder = PacketDecoder(max_bytes=1 << 20, max_depth=8, max_destinations=10)
        for names, variant in seq:
            doc = _doc(names, variant)
            assert _outcome(decoder.keys, doc) == _outcome(lambda d: decode_keys(d, max_depth=8), doc), doc
            if decoder.values is not None:  # what a COPY would send: the row's own values, in the names' order
                keys = decoder.keys(doc)
                whole = msgspec.json.decode(doc)
                assert msgspec.structs.astuple(decoder.values) == tuple(whole[k] for k in keys), doc
                assert not any(isinstance(v, float) for v in whole.values()), doc
    finally:
        keyshapes.BUILD_EVERY, keyshapes.MISSES, keyshapes.PAUSE, keyshapes.WINDOW = saved


def test_rows_of_one_shape_get_its_one_tuple_and_a_permutation_is_the_same_shape() -> None:
    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=8, max_destinations=10)
    first = decoder.keys(b'{"a": 1, "b": "x"}')
    second = decoder.keys(b'{"a": 2, "b": "y"}')  # seen twice in a row: built, and current
    assert first == second == ("a", "b")
    third = decoder.keys(b'{"b": "z", "a": 3}')
    assert third is decoder.keys(b'{"a": 4, "b": null}') and third == ("a", "b")  # read by the shape
    assert decoder.keys(b'{"a": 1}') == ("a",)  # a miss: read the general way
    with pytest.raises(PacketError, match="not UTF-8"):
        decoder.keys(b'{"a": 1, "b": "\xff"}')


def test_ever_new_names_build_at_most_one_decoder_per_build_interval_and_keep_at_most_max_shapes() -> None:
    shapes = KeyShapes()
    builds = 0
    build = shapes._build

    def counted(keys: tuple[str, ...]) -> Any:
        nonlocal builds
        builds += 1
        return build(keys)

    shapes._build = counted  # type: ignore[method-assign]
    rows = 20 * keyshapes.BUILD_EVERY
    for i in range(rows):
        names = (f"c{i // 2}",)  # every name twice in a row: the most a hostile stream can ask for
        if shapes.guess(msgspec.json.encode({names[0]: 1})) is None:
            shapes.learn(names)
    assert 10 <= builds <= rows // keyshapes.BUILD_EVERY + 1
    assert len(shapes._shapes) <= keyshapes.MAX_SHAPES


def test_wide_rows_are_never_built_into_a_decoder() -> None:
    shapes = KeyShapes()
    wide = tuple(f"c{i}" for i in range(keyshapes.MAX_COLUMNS + 1))
    shapes.learn(wide)
    shapes.learn(wide)
    assert not shapes._shapes and shapes._current is None


def test_interleaved_shapes_stop_the_guessing_for_a_while_then_take_it_up_again() -> None:
    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=8, max_destinations=10)
    a, b = b'{"a": 1, "b": 2}', b'{"x": 1}'
    decoder.keys(a)
    decoder.keys(a)  # "a, b" is built and current
    shapes = decoder._shapes
    assert shapes._current is not None
    shapes._since_build = keyshapes.BUILD_EVERY
    for _ in range(2):
        decoder.keys(b)  # "x" is built too (two in a row), and made current
    misses = 0
    for i in range(4 * keyshapes.MISSES):
        if shapes._current is None:
            break
        decoder.keys(a if i % 2 else b)
        misses += 1
    assert shapes._current is None and shapes._pause == keyshapes.PAUSE and misses <= 2 * keyshapes.MISSES + 2
    for _ in range(keyshapes.PAUSE):
        assert decoder.keys(a) == ("a", "b")  # the general way meanwhile
    assert shapes._pause == 0
    decoder.keys(a)  # known: current again, no build
    assert decoder.keys(a) is shapes._current[0]  # type: ignore[index]


# ------------------------------------------------------------------ read_all: a run by its first row's shape

def _count_builds(shapes: KeyShapes) -> list[tuple[str, ...]]:
    built: list[tuple[str, ...]] = []
    build = shapes._build

    def counted(keys: tuple[str, ...]) -> Any:
        built.append(keys)
        return build(keys)

    shapes._build = counted  # type: ignore[method-assign]
    return built


def test_read_all_builds_a_shape_only_for_names_met_before_and_reads_a_run_by_it() -> None:
    shapes = KeyShapes()
    built = _count_builds(shapes)
    run = [msgspec.json.encode({"id": i, "name": f"n{i}", "ok": True, "gone": None}) for i in range(20)]
    assert shapes.read_all(run) is None and shapes.pending and not built  # first met: remembered only
    names, values = shapes.read_all(run) or ((), [])
    assert names == ("id", "name", "ok", "gone") and built == [names]
    assert [msgspec.structs.astuple(v) for v in values] == [tuple(msgspec.json.decode(d).values()) for d in run]
    assert shapes._current is not None and shapes._current[0] is names  # made current: guess_all reads it now
    assert shapes.guess_all(run) is not None
    # told that guess_all of these rows just failed, the current shape is not tried again (no second decode)
    assert shapes.read_all(run, tried=True) is None and not shapes.pending
    other = [*run[:5], msgspec.json.encode({"id": 1, "name": "x", "ok": True}), *run[5:]]
    assert shapes.read_all(other) is None and not shapes.pending  # another row's names: not a shape to wait for
    floats = [msgspec.json.encode({"id": 1.5})] * 3
    assert shapes.read_all(floats) is None and not shapes.pending  # no float in a shape: never
    assert shapes.read_all([b'{"a": [1]}']) is None and not shapes.pending
    assert shapes.read_all([]) is None and len(built) == 1
    mixed = [msgspec.json.encode({"p": 1}), msgspec.json.encode({"p": 1, "q": 2})]
    assert shapes.read_all(mixed) is None and shapes.pending  # first met
    assert shapes.read_all(mixed) is None and not shapes.pending and built[-1] == ("p",)  # built, and not alike


def test_read_all_of_ever_new_names_builds_nothing_and_keeps_a_bounded_memory_of_them() -> None:
    shapes = KeyShapes()
    built = _count_builds(shapes)
    for i in range(3 * keyshapes.CANDIDATES):
        assert shapes.read_all([msgspec.json.encode({f"c{i}": 1, "id": i})] * 8) is None
    assert not built and len(shapes._seen) == keyshapes.CANDIDATES


def test_read_all_builds_at_most_its_credit_and_one_per_rows_per_build() -> None:
    # the most a hostile stream can ask for: every name twice, in runs of 8 (a run costs its rows to the budget)
    shapes = KeyShapes()
    built = _count_builds(shapes)
    rows = 0
    for i in range(4000):
        run = [msgspec.json.encode({f"c{i // 2}": 1})] * 8
        shapes.read_all(run)
        rows += len(run)
    assert keyshapes.BUILD_CREDIT <= len(built) <= keyshapes.BUILD_CREDIT + rows / keyshapes.ROWS_PER_BUILD + 1
    assert len(shapes._shapes) <= keyshapes.MAX_SHAPES


def test_read_all_of_a_hundred_tables_builds_each_shape_once() -> None:
    shapes = KeyShapes()
    built = _count_builds(shapes)
    runs = [[msgspec.json.encode({"id": i, f"a{t}": "x", f"b{t}": i}) for i in range(8)] for t in range(100)]
    for _ in range(40):  # as a hundred contexts in every run of a partition would come
        for run in runs:
            shapes.read_all(run)
    assert sorted(built) == sorted({tuple(msgspec.json.decode(r[0])) for r in runs})
    assert all(shapes.read_all(run) is not None for run in runs)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 14)), min_size=1, max_size=12),
       st.integers(1, 4))
def test_what_read_all_reads_is_what_the_general_way_reads(seq: list[tuple[tuple[str, ...], int]],
                                                           repeat: int) -> None:
    shapes = KeyShapes()
    docs = [_doc(names, variant) for names, variant in seq]
    for _ in range(repeat):
        got = shapes.read_all(docs)
        if got is None:
            continue
        names, values = got
        for doc, value in zip(docs, values, strict=True):
            assert (frozenset(names), len(names)) == _outcome(lambda d: decode_keys(d, max_depth=8), doc), doc
            whole = msgspec.json.decode(doc)
            assert msgspec.structs.astuple(value) == tuple(whole[k] for k in names), doc


def test_wide_shapes_and_names_met_once_stay_within_a_few_megabytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # the most memory a stream can make the shapes hold: 64 columns of 63 characters (4,032 of MAX_NAME_BYTES),
    # each set of names sent twice, with builds always in hand
    import tracemalloc

    monkeypatch.setattr(keyshapes, "ROWS_PER_BUILD", 0.001)
    shapes = KeyShapes()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2 * keyshapes.CANDIDATES):
            doc = msgspec.json.encode({f"{i:08d}{'n' * 53}{j:02d}": 1 for j in range(64)})
            shapes.read_all([doc])
            if i % 3:  # two of three sets built (met again), the others only remembered
                shapes.read_all([doc])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert shapes._bytes <= keyshapes.MAX_SHAPE_BYTES and len(shapes._seen) <= keyshapes.CANDIDATES
    assert 0 < len(shapes._shapes) < keyshapes.MAX_SHAPES  # the bytes bound, not the count, made room
    assert held < 10_000_000, f"{held:,} bytes"
    one = KeyShapes()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        built = one._build(tuple(f"{j:02d}{'w' * 61}" for j in range(64)))
        cost = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert built is not None and keyshapes.shape_bytes(next(iter(one._shapes))) >= cost  # counted at least whole


def test_dropped_shapes_are_collected_even_when_the_collector_rarely_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # a Struct type refers to itself: once dropped it waits for the cyclic collector, which the writer's
    # thresholds run rarely (tune_gc); ever-new names, each sent twice, build and drop thousands of shapes
    import gc
    import tracemalloc

    monkeypatch.setattr(keyshapes, "ROWS_PER_BUILD", 0.001)
    shapes = KeyShapes()
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(4000):
            doc = msgspec.json.encode({f"c{i}_{j}": j for j in range(8)})
            shapes.read_all([doc])
            shapes.read_all([doc])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert len(shapes._shapes) == keyshapes.MAX_SHAPES
    assert held < 12_000_000, f"{held:,} bytes held after 4,000 shapes built"
