"""Sort and route: filtering, offsets, routing against config, grouping per table, failures confined to a record."""

from __future__ import annotations

import msgspec
import pytest
from confluent_kafka import Message
from hypothesis import given
from hypothesis import strategies as st

from kapow.bytecache import entry_cost
from kapow.config import parse_config
from kapow.contract import CONTEXT_VALUE, Destination, TableKey
from kapow.errors import ErrorClass, ErrorCode, Failure
from kapow.pipeline.route import Router
from kapow.pipeline.sort import Sorter, values_bytes
from kapow.pipeline.work import LARGE_PACKET, PACKET_OVERHEAD, record_bytes

CONFIG = parse_config("""
[kafka]
bootstrap_servers = "x:1"
topics = ["in", "in2"]
[[destinations]]
vanity = "wh"
databases = ["db", "db2"]
[[destinations]]
vanity = "locked"
databases = ["db"]
schemas = ["public"]
tables = ["public.ok"]
modes = ["insert", "upsert", "delete"]
""")

HEADERS = [("context", CONTEXT_VALUE)]


def msg(value: bytes | None, offset: int, partition: int = 0, headers: list[tuple[str, bytes]] | None = HEADERS,
        topic: str = "in") -> Message:
    return Message(topic=topic, partition=partition, offset=offset, key=None, value=value, headers=headers,
                   timestamp=(1, 1_700_000_000_000 + offset))


def packet(data: object, *dests: dict[str, object], **dest: object) -> bytes:
    d = {"type": "postgres", "vanity": "wh", "database": "db", "schema": "public", "table": "t", **dest}
    return msgspec.json.encode({"pipeline_context": {"destinations": list(dests) or [d]}, "data": data})


def route(**fields: object) -> object:
    d = {"vanity": "wh", "database": "db", "table": "t", **fields}
    return Router(CONFIG).route(msgspec.convert(d, Destination))


def test_filter_counts_and_offsets_cover_everything() -> None:
    msgs = [msg(packet({"id": 1}), 0), msg(b"other", 1, headers=None), msg(packet({"id": 2}), 7, partition=3),
            msg(b"x", 2, topic="in2", headers=[("context", b"[" * 2000)])]
    batch, works = Sorter(CONFIG).sort(1, msgs)
    assert batch.offsets == {("in", 0): 1, ("in", 3): 7, ("in2", 0): 2}
    assert (batch.received, batch.filtered, batch.packets) == (4, 2, 2)
    assert batch.topics["in"].filtered == 1 and batch.topics["in"].passed == 2 and batch.topics["in2"].filtered == 1
    assert [len(w.rows) for w in works] == [2]
    assert works[0].key == TableKey("wh", "db", "public", "t")


def test_rows_keep_order_and_group_per_table() -> None:
    msgs = [msg(packet({"id": i}, table=f"t{i % 3}"), i) for i in range(30)]
    _, works = Sorter(CONFIG).sort(1, msgs)
    assert sorted(w.key.table for w in works) == ["t0", "t1", "t2"]
    for work in works:
        offsets = [row.msg.offset() for row in work.rows]
        assert offsets == sorted(offsets)
        assert work.nbytes == sum(record_bytes(row.msg) for row in work.rows) + sum(
            values_bytes(len(row.doc), row.msg.value().isascii(), len(row.keys)) for row in work.rows
            if row.values is not None)


def test_two_destinations_two_works_and_a_bad_one_fails_alone() -> None:
    d1 = {"vanity": "wh", "database": "db", "table": "a"}
    d2 = {"vanity": "wh", "database": "db2", "table": "b"}
    bad = {"vanity": "nope", "database": "db", "table": "c"}
    batch, works = Sorter(CONFIG).sort(1, [msg(packet({"id": 1}, d1, d2, bad), 0)])
    assert {(w.key.database, w.key.table) for w in works} == {("db", "a"), ("db2", "b")}
    assert len(batch.errors) == 1
    assert batch.errors[0].failure.code is ErrorCode.UNKNOWN_DESTINATION
    assert batch.errors[0].destination is not None and batch.errors[0].destination.vanity == "nope"


def test_bad_packets_become_error_records_without_a_destination() -> None:
    batch, works = Sorter(CONFIG).sort(1, [msg(b"{", 0), msg(None, 1), msg(packet({}), 2)])
    assert not works
    assert [e.failure.code for e in batch.errors] == [ErrorCode.NOT_JSON, ErrorCode.NOT_JSON, ErrorCode.BAD_PACKET]
    assert all(e.destination is None for e in batch.errors)


class _Exploding(Message):  # type: ignore[misc]
    def value(self) -> bytes:
        raise RuntimeError("boom")


def test_a_record_that_breaks_sort_fails_alone_with_a_code() -> None:
    bad = _Exploding(topic="in", partition=0, offset=1, key=None, value=b"", headers=HEADERS, timestamp=(1, 1))
    batch, works = Sorter(CONFIG).sort(1, [msg(packet({"id": 1}), 0), bad, msg(packet({"id": 2}), 2)])
    assert [len(w.rows) for w in works] == [2]
    assert [e.failure.code for e in batch.errors] == [ErrorCode.INTERNAL]
    assert batch.offsets[("in", 0)] == 2


def test_routing_failures() -> None:
    def code(**fields: object) -> ErrorCode:
        verdict = route(**fields)
        assert isinstance(verdict, Failure), verdict
        return verdict.code

    assert code(vanity="nope") is ErrorCode.UNKNOWN_DESTINATION
    assert code(database="other") is ErrorCode.UNKNOWN_DESTINATION
    assert code(type="s3") is ErrorCode.UNSUPPORTED_DESTINATION_TYPE
    assert code(table='x"; drop') is ErrorCode.UNKNOWN_TABLE
    assert code(schema="pg_catalog", table="pg_class") is ErrorCode.FORBIDDEN_DESTINATION
    assert code(schema="information_schema") is ErrorCode.FORBIDDEN_DESTINATION
    assert code(schema="pg_toast") is ErrorCode.FORBIDDEN_DESTINATION
    assert code(mode="delete") is ErrorCode.FORBIDDEN_MODE  # wh allows insert and upsert only
    assert code(mode="merge") is ErrorCode.BAD_PACKET
    assert code(key=["a;b"]) is ErrorCode.BAD_PACKET
    assert code(key=[]) is ErrorCode.BAD_PACKET
    assert not isinstance(route(mode="upsert", key=["id"]), Failure)


def test_allowlists_and_modes_per_server() -> None:
    ok = Router(CONFIG).route(Destination("locked", "db", "ok", mode="delete"))
    assert not isinstance(ok, Failure)
    for dest in (Destination("locked", "db", "other"), Destination("locked", "db", "ok", schema="s")):
        verdict = Router(CONFIG).route(dest)
        assert isinstance(verdict, Failure) and verdict.code is ErrorCode.FORBIDDEN_DESTINATION


def test_router_cache_skips_huge_names() -> None:
    router = Router(CONFIG)
    for i in range(100):
        router.route(Destination("v" * 100_000 + str(i), "db", "t"))
    assert not router._cache


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=40))
def test_every_record_is_filtered_filed_or_failed_exactly_once(spec: list[tuple[bool, int]]) -> None:
    msgs = []
    for offset, (is_packet, table) in enumerate(spec):
        value = packet({"id": offset}, table=f"t{table}") if table < 4 else packet({"id": offset}, vanity="x")
        msgs.append(msg(value, offset, headers=HEADERS if is_packet else None))
    batch, works = Sorter(CONFIG).sort(1, msgs)
    filed = sum(len(w.rows) for w in works)
    assert batch.filtered + filed + len(batch.errors) == len(msgs)
    assert all(e.failure.error_class is ErrorClass.USER for e in batch.errors)


def test_ten_thousand_tables_resolve_their_context_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # the route cache held the first 2,048 contexts: at 10,000 tables most packets resolved theirs again
    sorter = Sorter(CONFIG)
    msgs = [msg(packet({"id": i}, table=f"t{i:05d}"), i) for i in range(10_000)]
    sorter.sort(1, msgs)
    resolved: list[bytes] = []
    real = sorter._resolve
    monkeypatch.setattr(sorter, "_resolve", lambda context: resolved.append(context) or real(context))
    _, works = sorter.sort(2, msgs)
    assert resolved == [] and len(works) == 10_000


@pytest.mark.parametrize("dest", [{"table": "nosuch_{i}"}, {"database": "nodb_{i}"}, {"vanity": "v{i}"}])
def test_once_the_caches_are_full_contexts_met_once_are_not_cached(dest: dict[str, str]) -> None:
    # a flood of packets each to a new name evicted an entry from each of the three caches (contexts,
    # destinations, routes) for every packet it added (~15 us a packet), and every other client's contexts went
    sorter = Sorter(CONFIG)
    room = 40 * entry_cost(bytes(150))  # ~40 contexts in each cache
    sorter._routes.max_bytes = sorter.decoder._destinations.max_bytes = sorter.router._cache.max_bytes = room
    good = [msg(packet({"id": i}, table=f"t{i % 20}"), i) for i in range(40)]
    sorter.sort(1, good)
    cached = list(sorter._routes)
    assert len(cached) == 20
    n = 3000
    flood = [msg(packet({"id": i}, **{k: v.format(i=i) for k, v in dest.items()}), i, partition=i // 500)
             for i in range(n)]
    batch, works = sorter.sort(2, flood)
    assert len(batch.errors) + sum(len(w.rows) for w in works) == n
    if "table" in dest:  # a configured database: each table is the lane's to know
        assert len(works) == n and not batch.errors
    else:
        assert {r.failure.code for r in batch.errors} == {ErrorCode.UNKNOWN_DESTINATION}
        assert [r.msg.offset() for r in batch.errors] == list(range(n))
    assert list(sorter._routes)[:20] == cached, "the good contexts were pushed out by contexts met once"
    filled = {id(c): list(c) for c in (sorter._routes, sorter.router._cache, sorter.decoder._destinations)}
    more = [msg(packet({"id": i}, **{k: v.format(i=i) for k, v in dest.items()}), i, partition=i // 500)
            for i in range(n, 2 * n)]
    sorter.sort(2, more)  # full: no entry is evicted for a context met once
    assert {id(c): list(c) for c in (sorter._routes, sorter.router._cache, sorter.decoder._destinations)} == filled
    _, works = sorter.sort(3, good)
    assert sorted(len(w.rows) for w in works) == [2] * 20
    sorter.sort(4, flood[-5:])  # met twice: cached now, the oldest make room
    assert list(sorter._routes)[-5:] == [bytes(msgspec.json.encode({"destinations": [
        {"type": "postgres", "vanity": "wh", "database": "db", "schema": "public", "table": "t",
         **{k: v.format(i=i) for k, v in dest.items()}}]})) for i in range(n - 5, n)]


def test_the_last_context_shortcut_never_files_a_packet_under_its_neighbour() -> None:
    # Consecutive packets with the same context skip the cache; alternating ones, a refused destination between
    # two good ones, a header of another consumer between pipeline headers: each still gets its own verdict.
    other = [("context", b'{"consumer":{"type":"other"}}')]
    msgs = [msg(packet({"id": 1}), 0), msg(packet({"id": 2}, table="u"), 1), msg(packet({"id": 3}), 2),
            msg(packet({"id": 4}, vanity="nobody"), 3), msg(packet({"id": 5}), 4),
            msg(packet({"id": 6}), 5, headers=other),
            msg(packet({"id": 7}), 6), msg(packet({"id": 8}, table="u"), 7), msg(packet({"id": 9}, table="u"), 8)]
    batch, works = Sorter(CONFIG).sort(1, msgs)
    landed = {w.key.table: [msgspec.json.decode(r.doc)["id"] for r in w.rows] for w in works}
    assert landed == {"t": [1, 3, 5, 7], "u": [2, 8, 9]}
    assert [r.msg.offset() for r in batch.errors] == [3]
    assert batch.filtered == 1


@given(st.lists(st.tuples(st.sampled_from(["in", "in2"]), st.integers(0, 3), st.booleans()), max_size=60))
def test_offsets_and_counts_are_right_however_partitions_interleave(spec: list[tuple[str, int, bool]]) -> None:
    # the sorter stores a partition's offset once per run of it: interleaved runs must still end at its last record
    next_offset: dict[tuple[str, int], int] = {}
    msgs = []
    for topic, partition, ours in spec:
        offset = next_offset.get((topic, partition), 10 * partition)
        next_offset[(topic, partition)] = offset + 1 + partition  # gaps, as compaction or transactions leave
        msgs.append(msg(packet({"id": offset}), offset, partition, HEADERS if ours else None, topic))
    batch, works = Sorter(CONFIG).sort(1, msgs)
    assert batch.offsets == {tp: nxt - 1 - tp[1] for tp, nxt in next_offset.items()}
    for topic in ("in", "in2"):
        mine = [m for m in spec if m[0] == topic]
        if mine:
            assert (batch.topics[topic].passed, batch.topics[topic].filtered) == (
                sum(o for _, _, o in mine), sum(not o for _, _, o in mine))
    assert sum(len(w.rows) for w in works) == sum(o for _, _, o in spec)


def test_the_sorter_keeps_no_row_of_a_batch_once_it_is_sorted() -> None:
    # its rows hold their packets: kept until the next batch, they would outlive the batch's release
    sorter = Sorter(CONFIG)
    _batch, works = sorter.sort(1, [msg(packet({"id": 1}), 0), msg(packet({"id": 2}, table="u"), 1)])
    assert len(works) == 2
    assert all(not isinstance(v, tuple) or not any(x in works for x in v) for v in vars(sorter).values())
    assert sorter._hot is None


def test_a_row_keeps_its_decoded_values_unless_its_packet_is_large() -> None:
    """The values a COPY sends are kept with the row; for a large packet they would hold as much memory again as
    its value, which the memory bound counts once: such a row keeps none (and goes as JSON)."""
    from kapow.pipeline.work import LARGE_PACKET

    small = [msg(packet({"id": i, "s": "x"}), i) for i in range(3)]
    large = [msg(packet({"id": 10 + i, "s": "x" * LARGE_PACKET}), 10 + i) for i in range(3)]
    _batch, works = Sorter(CONFIG).sort(1, small + large)
    rows = works[0].rows
    assert [r.values is not None for r in rows] == [False, False, True, False, False, False]  # shape: from row 3
    assert msgspec.structs.astuple(rows[2].values) == (2, "x")


@pytest.mark.parametrize("text", ["x" * 60_000, "x" * 60_000 + "\U0001f600", "é" * 20_000 + "€", "ab" * 100])
def test_the_bytes_counted_for_a_row_cover_the_values_it_keeps(text: str) -> None:
    """The memory bound counts what a row holds: its packet's value, the overhead, and the decoded values kept for
    a COPY, which a non-ASCII string can make four times the text (one emoji: four bytes a character)."""
    import gc
    import tracemalloc

    msgs = [msg(packet({"id": i, "s": text, "n": i}), i) for i in range(12)]
    sorter = Sorter(CONFIG)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _batch, works = sorter.sort(1, msgs)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    (work,) = works
    assert sum(r.values is not None for r in work.rows) == 10  # the shape reads from the third row on
    values = sum(len(m.value()) for m in msgs)  # made before the sort, with the records
    assert work.nbytes - values >= held, (work.nbytes - values, held)  # what the sort made is counted too


# ------------------------------------------------------------------------------------- runs filed whole

_DEST_A = {"vanity": "wh", "database": "db", "table": "a"}
_DEST_B = {"vanity": "wh", "database": "db2", "table": "b"}
_NOPE = {"vanity": "nope", "database": "db", "table": "c"}

# what one record of a run may be: mostly the usual packet, sometimes anything that must make the run be filed
# one by one (another shape, context, header, a bad or missing value, a float, a large packet, a failure)
_RECORD = st.one_of(
    st.just("usual"), st.just("usual"), st.just("usual"), st.just("usual"),
    st.sampled_from(["shape", "context", "named", "two", "failure", "same-table", "no-header", "foreign-header", "none",
                     "not-json", "no-envelope", "float", "nested", "large", "utf8", "zero", "empty"]))


def _record(kind: str, i: int) -> tuple[bytes | None, list[tuple[str, bytes]] | None]:
    data: dict[str, object] = {"id": i, "name": f"n-{i}", "ok": i % 2 == 0, "gone": None}
    value: bytes | None = packet(data, _DEST_A)
    headers: list[tuple[str, bytes]] | None = HEADERS
    if kind == "shape":
        value = packet({"id": i, "other": "x"}, _DEST_A)
    elif kind == "context":
        value = packet(data, _DEST_B)
    elif kind == "named":  # another table, of other column names
        value = packet({"id": i, "label": f"l-{i}", "flag": None}, _DEST_B)
    elif kind == "two":
        value = packet(data, _DEST_A, _DEST_B)
    elif kind == "failure":
        value = packet(data, _DEST_A, _NOPE)
    elif kind == "same-table":
        value = packet(data, _DEST_A, {**_DEST_A, "mode": "upsert"})
    elif kind == "no-header":
        headers = None
    elif kind == "foreign-header":
        headers = [("context", b'{"consumer": {"type": "other"}}')]
    elif kind == "none":
        value = None
    elif kind == "not-json":
        value = b'{"pipeline_context": '
    elif kind == "no-envelope":
        value = msgspec.json.encode({"data": data})
    elif kind == "float":
        value = packet({**data, "ok": 1.10}, _DEST_A)
    elif kind == "nested":
        value = packet({**data, "gone": {"a": [1]}}, _DEST_A)
    elif kind == "large":
        value = packet({**data, "name": "é" * 40_000}, _DEST_A)
    elif kind == "utf8":
        value = packet({**data, "name": "漢字 ✓"}, _DEST_A)
    elif kind == "zero":
        value = packet({**data, "id": 0}, _DEST_A).replace(b'"id":0', b'"id":-0')
    elif kind == "empty":
        value = packet({}, _DEST_A)
    return value, headers


def _outcome(batch: object, works: list[object]) -> object:
    """Everything sort hands on, in comparable form.

    A row's decoded values are not compared as such: a run read whole by its own shape keeps values for rows that
    one-by-one filing reads the general way (before the current shape is theirs). So each row's values, when it
    has them, must be its ``data``'s own values in the order of its names, and each work's bytes must be exactly
    what its rows hold (with or without values), its large bytes too: checked here, not compared. Errors are
    compared in offset order (a run filed by context fails one context's records after another's)."""
    from kapow.pipeline.batch import Batch
    from kapow.pipeline.work import TableWork
    assert isinstance(batch, Batch)
    out_works = []
    for w in works:
        assert isinstance(w, TableWork)
        nbytes = large = 0
        for r in w.rows:
            value = r.msg.value()
            size = record_bytes(r.msg)
            if r.values is not None:
                whole = msgspec.json.decode(bytes(r.doc))
                assert msgspec.structs.astuple(r.values) == tuple(whole[k] for k in r.keys), bytes(r.doc)
                size += values_bytes(len(r.doc), value.isascii(), len(r.keys))
            nbytes += size
            large += size if size > LARGE_PACKET else 0
        assert (w.nbytes, w.large) == (nbytes, large), (w.key, w.nbytes, nbytes, w.large, large)
        # the names as a set: a shape gives them in the order it first met them, which two sorters may not share
        rows = [(r.msg.offset(), bytes(r.doc), frozenset(r.keys), len(r.keys), r.dest) for r in w.rows]
        out_works.append((w.key, rows))
    errors = sorted((e.msg.offset(), e.failure.code, e.failure.message, e.destination) for e in batch.errors)
    counts = {t: (c.filtered, c.passed) for t, c in batch.topics.items()}
    return (batch.offsets, counts, batch.received, batch.filtered, batch.packets, errors, out_works)


@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["in", "in2"]), _RECORD, st.integers(1, 30)),
                min_size=1, max_size=6), st.integers(1, 120), st.integers(0, 3))
def test_a_run_filed_whole_hands_on_exactly_what_records_filed_one_by_one_do(
        runs: list[tuple[int, str, str, int]], count: int, warm: int) -> None:
    # records come in runs of 20 of one partition (two runs in a row of one partition: a longer run), so most
    # runs are long enough to be filed whole; in each, one record in ``odd_every`` is of the run's kind, the
    # others usual (a run whose kind still lets it be filed whole, such as non-ASCII text, is filed whole)
    msgs = []
    for i in range(count):
        partition, topic, kind, odd_every = runs[(i // 20) % len(runs)]
        value, headers = _record(kind if i % odd_every == odd_every - 1 else "usual", i)
        msgs.append(msg(value, i, partition, headers, topic=topic))
    usual = [msg(_record("usual", 10_000 + i)[0], 10_000 + i) for i in range(warm * 8)]

    def run(whole: bool) -> object:
        sorter = Sorter(CONFIG)
        if not whole:
            sorter._skip_runs = 10**9  # every run filed one by one
        if usual:
            sorter.sort(0, usual)  # the shape of the usual rows known (or not) before
        if whole:
            sorter._skip_runs = 0
        return _outcome(*sorter.sort(1, msgs))

    assert run(True) == run(False)


def test_a_usual_run_is_filed_whole_and_the_same_rows_come_out(monkeypatch: pytest.MonkeyPatch) -> None:
    msgs = [msg(_record("usual", i)[0], i) for i in range(64)]
    sorter = Sorter(CONFIG)
    sorter.sort(0, msgs[:8])  # the shape is learnt
    calls: list[int] = []
    real = sorter._file_split
    monkeypatch.setattr(sorter, "_file_split", lambda *a: calls.append(1) or real(*a))
    batch, works = sorter.sort(1, msgs)
    assert not calls, "a run of alike records is filed whole, not one by one"
    assert len(works) == 1 and [r.msg.offset() for r in works[0].rows] == list(range(64))
    assert all(r.values is not None for r in works[0].rows)
    one_by_one = Sorter(CONFIG)
    one_by_one.sort(0, msgs[:8])
    one_by_one._skip_runs = 10**9
    assert _outcome(batch, works) == _outcome(*one_by_one.sort(1, msgs))


def test_a_run_that_is_not_alike_is_not_tried_whole_again_for_a_while() -> None:
    sorter = Sorter(CONFIG)
    bad = [msg(b"garbage", i) for i in range(32)]
    batch, _ = sorter.sort(1, bad)
    assert [e.failure.code for e in batch.errors] == [ErrorCode.NOT_JSON] * 32
    assert sorter._skip_runs > 0
    # a run whose last row has other names: its names were read whole for nothing, so not again for a while
    sorter = Sorter(CONFIG)
    sorter.sort(0, [msg(_record("usual", 1000 + i)[0], 1000 + i) for i in range(8)])  # the shape is learnt
    sorter.sort(1, [msg(_record("usual", i)[0], i) for i in range(32)])
    assert sorter._skip_runs == 0
    odd = [msg(_record("shape" if i == 31 else "usual", 100 + i)[0], 100 + i) for i in range(32)]
    _, works = sorter.sort(2, odd)
    assert sum(len(w.rows) for w in works) == 32
    assert sorter._skip_runs > 0


_KINDS = ["usual", "shape", "context", "named", "two", "failure", "same-table", "no-header", "foreign-header", "none",
          "not-json", "no-envelope", "float", "nested", "large", "utf8", "zero", "empty"]


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize("warm", [0, 8])
def test_each_kind_of_record_in_a_run_is_filed_as_one_by_one_would(kind: str, warm: int) -> None:
    # a usual run, then runs with the kind every third record, every record, and once at the end
    spots = [lambda i: False, lambda i: i % 3 == 2, lambda i: True, lambda i: i == 19]
    msgs = []
    for r, spot in enumerate(spots):
        for i in range(20):
            value, headers = _record(kind if spot(i) else "usual", 20 * r + i)
            msgs.append(msg(value, 20 * r + i, r, headers))
    usual = [msg(_record("usual", 10_000 + i)[0], 10_000 + i) for i in range(warm)]

    def run(whole: bool) -> object:
        sorter = Sorter(CONFIG)
        sorter.sort(0, usual)
        sorter._skip_runs = 0 if whole else 10**9
        return _outcome(*sorter.sort(1, msgs))

    assert run(True) == run(False)


def test_a_batch_of_short_runs_is_filed_record_by_record(monkeypatch: pytest.MonkeyPatch) -> None:
    # a live stream over many partitions: runs of one record, where a run's own calls would cost more than they
    # save; the batch goes through one loop, with the same result
    msgs = [msg(_record("usual", i)[0], i, partition=i % 8) for i in range(64)]
    sorter = Sorter(CONFIG)
    runs: list[int] = []
    real = sorter._file_run
    monkeypatch.setattr(sorter, "_file_run", lambda *a: runs.append(1) or real(*a))
    batch, works = sorter.sort(1, msgs)
    assert not runs
    assert batch.offsets == {("in", p): 56 + p for p in range(8)}
    one_by_one = Sorter(CONFIG)
    one_by_one._skip_runs = 10**9
    assert _outcome(batch, works) == _outcome(*one_by_one.sort(1, msgs))


def _spread(n: int, dests: list[dict[str, str]], first: int = 0) -> list[Message]:
    """``n`` usual records of one partition, each to the next of ``dests`` in turn (traffic to many tables)."""
    return [msg(packet({"id": i, "name": f"n-{i}", "ok": i % 2 == 0, "gone": None}, dests[i % len(dests)]), i)
            for i in range(first, first + n)]


def test_a_run_to_several_tables_is_filed_whole_by_context(monkeypatch: pytest.MonkeyPatch) -> None:
    dests = [{"vanity": "wh", "database": "db", "table": f"t{k}"} for k in range(3)] + [_DEST_B]
    msgs = _spread(64, dests)
    sorter = Sorter(CONFIG)
    sorter.sort(0, _spread(8, dests, 1000))  # the shape is learnt
    calls: list[int] = []
    real = sorter._file_split
    monkeypatch.setattr(sorter, "_file_split", lambda *a: calls.append(1) or real(*a))
    batch, works = sorter.sort(1, msgs)
    assert not calls, "a run to several tables, one context each, is filed whole"
    assert [w.key.table for w in works] == ["t0", "t1", "t2", "b"]  # in the order each table first comes
    assert [[r.msg.offset() for r in w.rows] for w in works] == [list(range(k, 64, 4)) for k in range(4)]
    one_by_one = Sorter(CONFIG)
    one_by_one.sort(0, _spread(8, dests, 1000))
    one_by_one._skip_runs = 10**9
    assert _outcome(batch, works) == _outcome(*one_by_one.sort(1, msgs))


@pytest.mark.parametrize("case", ["shared-table", "twice-one-table", "failure", "too-many"])
def test_a_run_whose_contexts_cannot_be_filed_apart_is_filed_one_by_one(case: str) -> None:
    a, b = _DEST_A, {"vanity": "wh", "database": "db", "table": "t1"}
    if case == "shared-table":  # table a reached by two contexts: its rows must interleave in offset order
        dests: list[list[dict[str, str]]] = [[a], [a, b]]
    elif case == "twice-one-table":  # one context reaches table a twice (insert and upsert): rows interleave
        dests = [[a, {**a, "mode": "upsert"}], [b]]
    elif case == "failure":
        dests = [[a], [b, _NOPE]]
    else:  # more contexts than GROUP_MIN records each
        dests = [[{"vanity": "wh", "database": "db", "table": f"t{k}"}] for k in range(40)]
    msgs = [msg(packet({"id": i, "name": f"n-{i}", "ok": True, "gone": None}, *dests[i % len(dests)]), i)
            for i in range(64)]
    warm = [msg(_record("usual", 1000 + i)[0], 1000 + i) for i in range(8)]

    def run(whole: bool) -> tuple[object, Sorter]:
        sorter = Sorter(CONFIG)
        sorter.sort(0, warm)
        sorter._skip_runs = 0 if whole else 10**9
        out = _outcome(*sorter.sort(1, msgs))
        return out, sorter

    (whole, sorter), (one, _) = run(True), run(False)
    assert whole == one
    # not grouped again for a while, unless it was only a run too short for its contexts (given up early); the
    # whole filing of one-context runs is never turned off by it
    assert sorter._skip_runs == 0
    assert (sorter._skip_groups == 0) if case == "too-many" else (sorter._skip_groups > 0)


@pytest.mark.parametrize("case", ["shared-table", "failure", "bad-context"])
def test_a_refused_grouping_leaves_other_partitions_runs_filed_whole(case: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # a helper's review: a refused grouping once turned whole filing off for every partition for 4,096 records
    a, b = _DEST_A, {"vanity": "wh", "database": "db", "table": "t1"}
    second = [a, b] if case == "shared-table" else [b, _NOPE] if case == "failure" else [b]
    mixed = []
    for i in range(32):
        data: dict[str, object] = {"id": i, "name": f"n-{i}", "ok": True, "gone": None}
        value = packet(data, *([a] if i % 2 == 0 else second))
        if case == "bad-context" and i % 2:  # a context refused whole: no destination at all
            value = b'{"pipeline_context":{"destinations":[]},"data":' + msgspec.json.encode(data) + b"}"
        mixed.append(msg(value, i, 0))
    usual = [msg(_record("usual", 100 + i)[0], 100 + i, 1) for i in range(64)]
    sorter = Sorter(CONFIG)
    sorter.sort(0, [msg(_record("usual", 1000 + i)[0], 1000 + i, 2) for i in range(8)])  # the shape is learnt
    calls: list[int] = []
    real = sorter._file_split
    monkeypatch.setattr(sorter, "_file_split", lambda *a: calls.append(a[2].partition()) or real(*a))
    sorter.sort(1, mixed + usual)
    assert 1 not in calls, "the one-context run of partition 1 is still filed whole"
    assert sorter._skip_groups > 0


@pytest.mark.parametrize("whole", [True, False])
def test_a_refused_context_sent_again_and_again_keeps_no_memory(whole: bool) -> None:
    # a refused context is cached; the cached exception raised again grew its traceback by the frames (and so the
    # records) of every packet that carried it: 40,000 such packets kept 100 MB, without bound
    import tracemalloc

    def batch(b: int) -> list[Message]:
        return [msg(b'{"pipeline_context":{"destinations":[]},"data":{"id":%d,"note":"%s"}}' % (i, b"x" * 200),
                    b * 1000 + i) for i in range(1000)]

    sorter = Sorter(CONFIG)
    sorter.sort(0, batch(0))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for b in range(1, 6):
            sorter._skip_runs = 0 if whole else 10**9
            out, works = sorter.sort(b, batch(b))
            assert not works and {e.failure.code for e in out.errors} == {ErrorCode.BAD_PACKET}
            assert len(out.errors) == 1000
            del out, works
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 500_000, f"{grown:,} bytes kept after 5,000 packets"


# ------------------------------------------------------------------ tables of different column names

def _names_of(table: int, i: int) -> dict[str, object]:
    """Table ``table``'s row ``i``: its own column names (a company's tables share none but the key)."""
    return {"id": i, f"name_{table}": f"n-{i}", f"ok_{table}": i % 2 == 0, f"gone_{table}": None}


def _company(n: int, tables: int, first: int = 0, partition: int = 0) -> list[Message]:
    """``n`` records of one partition, each to the next of ``tables`` tables in turn, in that table's names."""
    return [msg(packet(_names_of(i % tables, i), {"vanity": "wh", "database": "db", "table": f"t{i % tables}"}), i,
                partition) for i in range(first, first + n)]


def test_tables_of_different_names_are_filed_whole_by_context_once_their_names_repeat(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sorter = Sorter(CONFIG)
    calls: list[int] = []
    real = sorter._file_split
    monkeypatch.setattr(sorter, "_file_split", lambda *a: calls.append(a[2].offset()) or real(*a))
    first = _company(64, 4)
    sorter.sort(0, first)  # each table's names met once: remembered, not built; filed one by one
    assert len(calls) == 64
    calls.clear()
    second = _company(64, 4, first=1000)
    batch, works = sorter.sort(1, second)  # met again: a shape each, and each context's rows read whole by it
    assert not calls, "each table's rows are read by their own shape"
    assert [w.key.table for w in works] == ["t0", "t1", "t2", "t3"]
    assert all(r.values is not None for w in works for r in w.rows)
    assert [w.rows[0].keys for w in works] == [tuple(_names_of(t, 0)) for t in range(4)]
    one_by_one = Sorter(CONFIG)
    one_by_one._skip_runs = 10**9
    one_by_one.sort(0, first)
    assert _outcome(batch, works) == _outcome(*one_by_one.sort(1, second))


def test_one_context_of_other_names_is_filed_one_by_one_and_the_others_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    sorter = Sorter(CONFIG)
    sorter.sort(0, _company(64, 4))
    sorter.sort(1, _company(64, 4, first=1000))  # the four shapes are built
    run = _company(64, 4, first=2000)
    odd = run[9]  # table t1's third record: one column more
    run[9] = msg(packet({**_names_of(1, 2009), "extra": 1}, {"vanity": "wh", "database": "db", "table": "t1"}),
                 odd.offset())
    calls: list[int] = []
    real = sorter._file_split
    monkeypatch.setattr(sorter, "_file_split", lambda *a: calls.append(a[2].offset()) or real(*a))
    batch, works = sorter.sort(2, run)
    assert calls == list(range(2001, 2064, 4)), "t1's records one by one, in offset order; the others whole"
    assert sorter._skip_groups == 0 and sorter._skip_runs == 0
    one_by_one = Sorter(CONFIG)
    one_by_one._skip_runs = 10**9
    assert _outcome(batch, works) == _outcome(*one_by_one.sort(2, run))


def test_runs_of_two_topics_with_different_names_are_each_filed_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    # one table per topic, runs alternating: the current shape is the other topic's at every run
    def runs(first: int) -> list[Message]:
        out = []
        for r in range(4):
            table = r % 2
            out += [msg(packet(_names_of(table, first + 100 * r + i),
                               {"vanity": "wh", "database": "db", "table": f"t{table}"}),
                        first + 100 * r + i, topic=("in", "in2")[table]) for i in range(20)]
        return out

    sorter = Sorter(CONFIG)
    sorter.sort(0, runs(0))
    calls: list[int] = []
    real = sorter._file_split
    monkeypatch.setattr(sorter, "_file_split", lambda *a: calls.append(a[2].offset()) or real(*a))
    batch, works = sorter.sort(1, runs(1000))
    assert not calls and sorter._skip_runs == 0
    one_by_one = Sorter(CONFIG)
    one_by_one._skip_runs = 10**9
    one_by_one.sort(0, runs(0))
    assert _outcome(batch, works) == _outcome(*one_by_one.sort(1, runs(1000)))


def test_runs_whose_contexts_never_read_whole_are_not_grouped_for_a_while() -> None:
    # rows of every table with an optional column given every other row: no context's rows are alike
    def run(first: int) -> list[Message]:
        out = []
        for i in range(first, first + 64):
            data = _names_of(i % 4, i) if i % 8 < 4 else {**_names_of(i % 4, i), "note": "n"}
            out.append(msg(packet(data, {"vanity": "wh", "database": "db", "table": f"t{i % 4}"}), i))
        return out

    sorter = Sorter(CONFIG)
    sorter.sort(0, run(0))  # names met once: they may still be built, so grouping goes on
    assert sorter._skip_groups == 0
    batch, works = sorter.sort(1, run(1000))  # built, and no context's rows all have them
    assert sorter._skip_groups > 0 and sorter._skip_runs == 0
    one_by_one = Sorter(CONFIG)
    one_by_one._skip_runs = 10**9
    one_by_one.sort(0, run(0))
    assert _outcome(batch, works) == _outcome(*one_by_one.sort(1, run(1000)))


# ------------------------------------------------------------- copies republished for one destination

def _copy_headers(dest: dict[str, str] | None, offset: int) -> list[tuple[str, bytes]]:
    """A copy's headers as redrive and reschedule write them: the client's, the attempt, the origin, and the
    destination that failed (as the error record named it)."""
    from kapow.contract import destination_json

    headers = [("context", CONTEXT_VALUE), ("kapow-attempt", b"2"), ("kapow-origin", b"in/0/%d" % offset)]
    if dest is not None:
        decoded = msgspec.convert({"type": "postgres", "schema": "public", **dest}, Destination)
        headers.append(("kapow-destination", destination_json(decoded)))
    return headers


@pytest.mark.parametrize("whole", [True, False])
def test_a_copy_for_one_destination_lands_there_alone(whole: bool) -> None:
    # a packet to a and b, parked for b (b's database was down): its copy must not land in a again, where an old
    # upsert would move a newer row back (a hostile run saw it), nor fail a refused destination twice
    nope = [msg(packet({"id": i, "name": "x", "ok": True, "gone": None}, _DEST_A, _DEST_B, _NOPE), i,
                headers=_copy_headers(_DEST_B, i)) for i in range(20)]
    same = [msg(packet({"id": i, "name": "x", "ok": True, "gone": None}, _DEST_A, _DEST_B), 100 + i,
                headers=_copy_headers(_DEST_B, 0)) for i in range(20)]  # one header list: a run filed whole
    sorter = Sorter(CONFIG)
    sorter._skip_runs = 0 if whole else 10**9
    batch, works = sorter.sort(1, nope + same)
    assert [(w.key.table, len(w.rows)) for w in works] == [("b", 40)]
    assert batch.errors == [] and batch.packets == 40
    unknown = [msg(packet({"id": 1, "name": "x", "ok": True, "gone": None}, _DEST_A, _DEST_B), 0,
                   headers=_copy_headers({"vanity": "wh", "database": "db", "table": "gone"}, 0))]
    _, works = Sorter(CONFIG).sort(2, unknown)  # it names none of them (a changed packet?): all, as it says
    assert sorted(w.key.table for w in works) == ["a", "b"]
    plain = [msg(packet({"id": 1, "name": "x", "ok": True, "gone": None}, _DEST_A, _DEST_B), 0,
                 headers=_copy_headers(None, 0))]
    _, works = Sorter(CONFIG).sort(3, plain)  # a copy of a packet that failed whole: all its destinations
    assert sorted(w.key.table for w in works) == ["a", "b"]
    # a client's own kapow-destination (no kapow-origin: not a copy) is ignored, so it cannot make its packet skip
    # its other destinations (a helper's run: the packet then went to one table, and audit found it missing)
    forged = [h for h in _copy_headers(_DEST_B, 0) if h[0] != "kapow-origin"]
    for whole_run in (1, 20):
        records = [msg(packet({"id": i, "name": "x", "ok": True, "gone": None}, _DEST_A, _DEST_B), i,
                       headers=forged) for i in range(whole_run)]
        _, works = Sorter(CONFIG).sort(4, records)
        assert sorted((w.key.table, len(w.rows)) for w in works) == [("a", whole_run), ("b", whole_run)]


def test_a_copy_for_one_of_two_destinations_of_one_table_lands_in_that_one_alone() -> None:
    # a packet may name one table twice (an insert, and the same with a key or metadata): both encoded to one
    # kapow-destination, so the copy parked for one of them landed in both (with metadata: the copy's offset)
    keyed = {**_DEST_B, "key": ["id"]}
    copies = [msg(packet({"id": i, "name": "x", "ok": True, "gone": None}, _DEST_B, keyed), i,
                  headers=_copy_headers(keyed, i)) for i in range(5)]
    batch, works = Sorter(CONFIG).sort(1, copies)
    assert batch.errors == [] and [(w.key.table, len(w.rows)) for w in works] == [("b", 5)]
    assert {w.rows[0].dest.key for w in works} == {("id",)}
    plain = [msg(packet({"id": 1, "name": "x", "ok": True, "gone": None}, _DEST_B, keyed), 0,
                 headers=_copy_headers(_DEST_B, 0))]
    _, works = Sorter(CONFIG).sort(2, plain)
    assert [(w.key.table, [r.dest.key for r in w.rows]) for w in works] == [("b", [None])]


def test_the_destination_header_tells_variants_apart_and_stays_small() -> None:
    from kapow.contract import destination_json

    base = Destination("wh", "db", "t")
    assert b"variant" not in destination_json(base)  # as before: old parked copies still match
    variants = [base, Destination("wh", "db", "t", key=("id",)), Destination("wh", "db", "t", key=("id", "v")),
                Destination("wh", "db", "t", version="v"), Destination("wh", "db", "t", key=("x" * 100_000,))]
    headers = [destination_json(d) for d in variants]
    assert len(set(headers)) == len(variants) and max(map(len, headers)) < 200


def test_more_tables_of_their_own_names_than_shapes_kept_pause_the_grouping(monkeypatch: pytest.MonkeyPatch) -> None:
    # a helper's review: 1,250 tables of their own names in one partition went round faster than the names met
    # once are remembered, so every group waited for a shape never built, and sort cost 1.1-1.2x the old one
    from kapow import keyshapes
    from kapow.pipeline.sort import FRUITLESS_RUNS

    monkeypatch.setattr(keyshapes, "CANDIDATES", 1)  # names forgotten before they come again: never built
    # (nor by the one-by-one reading, which would otherwise build one of them, then read whole in every run)
    monkeypatch.setattr(keyshapes.KeyShapes, "learn", lambda self, keys: None)
    sorter = Sorter(CONFIG)
    for r in range(FRUITLESS_RUNS - 1):
        sorter.sort(r, _company(32, 8, first=1000 * r))
        assert sorter._skip_groups == 0, f"paused after {r + 1} runs"
    sorter.sort(FRUITLESS_RUNS, _company(32, 8, first=1000 * FRUITLESS_RUNS))
    assert sorter._skip_groups > 0 and sorter._skip_runs == 0


def test_a_packet_s_headers_and_key_count_toward_the_memory_bound_whole_run_or_one_by_one() -> None:
    """Headers and keys were not counted: 2,000 packets of 150 B each with a 1 MB header, held behind a locked
    table, took a writer bounded at 64 MB to 2.2 GB while it counted 3.7 MB (a hostile run)."""
    big = [*HEADERS, ("trace", b"h" * 100_000)]
    alike = [Message(topic="in", partition=0, offset=i, key=b"k" * 1000, value=packet({"id": i}), headers=big,
                     timestamp=(1, 1)) for i in range(40)]
    mixed = [msg(packet({"id": i}), i, headers=[*HEADERS, ("trace", b"h" * (1000 + i))]) for i in range(40)]
    small = [*HEADERS, ("trace", b"h" * 2000)]  # a run filed whole: its headers and keys counted once for the run
    whole = [Message(topic="in", partition=0, offset=i, key=b"k" * 100, value=packet({"id": i}), headers=small,
                     timestamp=(1, 1)) for i in range(40)]
    empty, long = ([Message(topic="in", partition=0, offset=i, key=key, value=packet({"id": i}), headers=HEADERS,
                            timestamp=(1, 1)) for i in range(40)] for key in (b"", b"k" * 9000))  # one by one
    for msgs in (alike, mixed, whole, empty, long):
        _batch, works = Sorter(CONFIG).sort(1, msgs)
        (work,) = works
        held = sum(len(m.value()) + len(m.key() or b"") + sum(len(n) + len(v) for n, v in m.headers())
                   for m in msgs)
        assert work.nbytes >= held + PACKET_OVERHEAD * len(msgs), (work.nbytes, held)
