"""Routes and destinations: what each ``[[routes]]`` entry resolves to, the router's verdicts and its cache, and how
sort files records of routed topics (rows, tombstones, change events) beside envelope packets."""

from __future__ import annotations

import msgspec
import pytest
from confluent_kafka import Message

from kapow.config import parse_config
from kapow.contract import CONTEXT_VALUE, Destination, Metadata, TableKey
from kapow.errors import ErrorCode, Failure, PacketError, Scope
from kapow.pipeline.route import Router, route_specs
from kapow.pipeline.route import _cost as route_cost
from kapow.pipeline.sort import Sorter, tombstone_row, values_bytes
from kapow.pipeline.work import PACKET_OVERHEAD, header_bytes, record_bytes

BASE = """
[kafka]
bootstrap_servers = "x:1"
topics = ["in"]
[[destinations]]
vanity = "wh"
databases = ["db"]
modes = ["insert", "upsert", "delete"]
schemas = ["public", "sales"]
tables = ["public.t", "orders", "accounts", "cdc_t", "plain", "ins"]
[[destinations]]
vanity = "nodelete"
databases = ["db"]
[pipeline]
max_packet_bytes = 200
max_json_depth = 5
"""

ROUTES = BASE + """
[[routes]]
topic = "accounts.json"
vanity = "wh"
database = "db"
table = "accounts"
mode = "upsert"
key = ["id"]
version = "v"
metadata = { offset = "src_offset", key = "src_key" }
[[routes]]
topic = "cdc"
vanity = "wh"
database = "db"
schema = "sales"
table = "cdc_t"
format = "debezium"
metadata = { lsn = "lsn_col", ts_ms = "ts_col", partition = "p" }
[[routes]]
topic = "plain"
vanity = "nodelete"
database = "db"
table = "plain"
mode = "upsert"
[[routes]]
topic = "ins"
vanity = "wh"
database = "db"
table = "ins"
"""
CONFIG = parse_config(ROUTES)


def test_a_route_resolves_once_to_its_table_and_a_destination_per_mode() -> None:
    specs = route_specs(CONFIG)
    assert set(specs) == {"accounts.json", "cdc", "plain", "ins"}
    acc = specs["accounts.json"]
    assert acc.key == TableKey("wh", "db", "public", "accounts") and acc.destination is CONFIG.destinations[0]
    assert acc.dests["upsert"] == Destination("wh", "db", "accounts", mode="upsert", key=("id",), version="v",
                                              metadata=Metadata(offset="src_offset", key="src_key"))
    assert set(acc.dests) == {"insert", "upsert", "delete"} and acc.dests["delete"].mode == "delete"
    assert acc.source_columns == () and (acc.max_bytes, acc.max_depth) == (200, 5)
    cdc = specs["cdc"]
    assert cdc.key == TableKey("wh", "db", "sales", "cdc_t")
    assert cdc.source_columns == (("lsn", "lsn_col"), ("ts_ms", "ts_col"))
    assert cdc.dests["upsert"].metadata == Metadata(partition="p") and cdc.dests["upsert"].key is None
    assert specs["ins"].dests["insert"].metadata is None and specs["ins"].dests["insert"].version is None


def test_a_route_deletes_only_when_its_mode_and_its_server_allow_it() -> None:
    specs = route_specs(CONFIG)
    assert specs["accounts.json"].deletes  # upsert, and the server allows deletes
    assert specs["cdc"].deletes  # a Debezium route deletes with its delete events
    assert not specs["plain"].deletes  # its server does not allow deletes
    assert not specs["ins"].deletes  # an insert route never deletes


def test_the_router_caches_verdicts_both_ways_and_skips_huge_names(monkeypatch: pytest.MonkeyPatch) -> None:
    router = Router(CONFIG)
    calls: list[Destination] = []
    real = router._resolve

    def counted(dest: Destination) -> object:
        calls.append(dest)
        return real(dest)

    monkeypatch.setattr(router, "_resolve", counted)
    ok, bad = Destination("wh", "db", "t"), Destination("nope", "db", "t")
    first = router.route(ok)
    assert router.route(ok) is first and router.route(bad) == router.route(bad)
    assert calls == [ok, bad], "a verdict was worked out twice"
    edge = Destination("wh", "db", "t", schema="s" * Router.MAX_NAME)
    longer = Destination("wh", "db", "t", schema="s" * (Router.MAX_NAME + 1))
    router.route(edge)
    router.route(longer)
    assert edge in router._cache and longer not in router._cache
    assert Router.MAX_BYTES == 16 * 1024 * 1024 and Router.MAX_NAME == 256
    router._cache.max_bytes = 20_000
    for i in range(200):  # ever-new table names: the cache keeps its bound, and the newest entries
        router.route(Destination("wh", "db", f"new_{i}"))
        assert router._cache.bytes <= 20_000 and router._cache.bytes == sum(map(route_cost, router._cache))
    assert Destination("wh", "db", "new_199") in router._cache and ok not in router._cache
    assert 10 <= len(router._cache) < 20


@pytest.mark.parametrize(("dest", "code"), [
    (Destination("wh", "db", "t", type="s3"), ErrorCode.UNSUPPORTED_DESTINATION_TYPE),
    (Destination("nope", "db", "t"), ErrorCode.UNKNOWN_DESTINATION),
    (Destination("wh", "other", "t"), ErrorCode.UNKNOWN_DESTINATION),
    (Destination("wh", "db", "t", schema="1bad"), ErrorCode.UNKNOWN_TABLE),
    (Destination("wh", "db", "bad name"), ErrorCode.UNKNOWN_TABLE),
    (Destination("wh", "db", "t", schema="pg_catalog"), ErrorCode.FORBIDDEN_DESTINATION),
    (Destination("wh", "db", "t", schema="PG_TEMP_3"), ErrorCode.FORBIDDEN_DESTINATION),
    (Destination("wh", "db", "t", schema="hr"), ErrorCode.FORBIDDEN_DESTINATION),
    (Destination("wh", "db", "t", schema="sales"), ErrorCode.FORBIDDEN_DESTINATION),  # sales.t is not listed
    (Destination("wh", "db", "salaries"), ErrorCode.FORBIDDEN_DESTINATION),
    (Destination("wh", "db", "t", mode="merge"), ErrorCode.BAD_PACKET),
    (Destination("nodelete", "db", "t", mode="delete"), ErrorCode.FORBIDDEN_MODE),
    (Destination("wh", "db", "t", mode="upsert", key=("a b",)), ErrorCode.BAD_PACKET),
    (Destination("wh", "db", "t", mode="upsert", version="v;"), ErrorCode.BAD_PACKET),
    (Destination("wh", "db", "t", mode="upsert", key=()), ErrorCode.BAD_PACKET),
    (Destination("wh", "db", "t", metadata=Metadata(offset="o-o")), ErrorCode.BAD_PACKET),
    (Destination("wh", "db", "t", metadata=Metadata(offset="c", partition="c")), ErrorCode.BAD_PACKET),  # one column
])
def test_the_router_refuses_with_the_code_that_says_why(dest: Destination, code: ErrorCode) -> None:
    verdict = Router(CONFIG).route(dest)
    assert isinstance(verdict, Failure) and verdict.code is code and verdict.scope is Scope.ROW, verdict


def test_the_router_accepts_what_is_configured() -> None:
    router = Router(CONFIG)
    for dest in (Destination("wh", "db", "t"), Destination("wh", "db", "orders", schema="sales"),
                 Destination("wh", "db", "orders", mode="delete", key=("id",), version="v",
                             metadata=Metadata(offset="o")),
                 Destination("nodelete", "db", "anything", schema="any"),
                 Destination("nodelete", "db", "t", schema="PG_CATALOG")):  # quoted: not the system's schema
        verdict = router.route(dest)
        assert not isinstance(verdict, Failure), verdict
        key, config = verdict
        assert key == TableKey(dest.vanity, dest.database, dest.schema, dest.table)
        assert config.vanity == dest.vanity


def test_refusals_name_what_is_wrong() -> None:
    router = Router(CONFIG)

    def message(dest: Destination) -> str:
        verdict = router.route(dest)
        assert isinstance(verdict, Failure)
        return verdict.message

    assert message(Destination("wh", "db", "t", type="s3")) == "destination type 's3' is not supported (supported:" \
                                                                " postgres)"
    assert message(Destination("wh", "db", "t", mode="merge")) == "mode 'merge' is not one of insert, upsert, delete"
    assert message(Destination("nodelete", "db", "t", mode="delete")) == (
        "mode 'delete' is not allowed for 'nodelete' (allowed: insert, upsert)")
    assert message(Destination("wh", "db", "t", mode="upsert", key=())) == "key must name at least one column"


# ---------------------------------------------------------------------------------------------------- routed records


def record(topic: str, value: bytes | None, key: bytes | None = b"1", offset: int = 0) -> Message:
    return Message(topic=topic, partition=2, offset=offset, key=key, value=value, timestamp=(1, 10 + offset))


def test_routed_records_need_no_header_and_land_on_their_table() -> None:
    sorter = Sorter(CONFIG)
    batch, works = sorter.sort(1, [record("accounts.json", b'{"id": 1, "v": 2}'),
                                   record("accounts.json", b'{"id": 2, "v": 3}', offset=1),
                                   record("ins", b'{"id": 5}', offset=2)])
    by_table = {w.key.table: w for w in works}
    assert set(by_table) == {"accounts", "ins"}
    acc = by_table["accounts"]
    assert [r.keys for r in acc.rows] == [("id", "v"), ("id", "v")]
    assert [r.dest.mode for r in acc.rows] == ["upsert", "upsert"] and acc.rows[0].route is None
    assert acc.nbytes == sum(map(record_bytes, (r.msg for r in acc.rows))) and acc.batch == 1
    assert by_table["ins"].rows[0].dest.mode == "insert"
    assert batch.topics["accounts.json"].passed == 2 and batch.topics["ins"].passed == 1
    assert batch.filtered == 0 and batch.packets == 3 and not batch.errors


def test_a_tombstone_deletes_on_a_deleting_route_and_is_skipped_elsewhere() -> None:
    sorter = Sorter(CONFIG)
    batch, works = sorter.sort(1, [record("accounts.json", None, b"7"), record("plain", None, offset=1),
                                   record("ins", None, offset=2), record("cdc", None, offset=3)])
    (work,) = works
    (row,) = work.rows
    assert row.dest.mode == "delete" and row.doc == b'{"id":7}' and row.keys == ("id",)
    assert work.nbytes == PACKET_OVERHEAD + len(b"7"), "a tombstone has no value, but its record (and key) is held"
    assert (batch.topics["plain"].filtered, batch.topics["ins"].filtered, batch.topics["cdc"].filtered) == (1, 1, 1)
    assert batch.filtered == 3 and batch.packets == 1


def test_change_events_are_left_whole_for_the_lane_to_decode() -> None:
    _batch, works = Sorter(CONFIG).sort(1, [record("cdc", b'{"op": "c", "after": {"id": 1}}')])
    (work,) = works
    (row,) = work.rows
    assert row.route is not None and row.route.key == TableKey("wh", "db", "sales", "cdc_t")
    assert (row.doc, row.keys, row.dest.mode) == (b"", (), "upsert")
    assert work.nbytes == record_bytes(row.msg) >= len(b'{"op": "c", "after": {"id": 1}}') + PACKET_OVERHEAD


def test_a_routed_record_that_cannot_be_a_row_fails_alone() -> None:
    sorter = Sorter(CONFIG)
    big = b'{"id": 1, "pad": "' + b"x" * 300 + b'"}'
    batch, works = sorter.sort(1, [record("accounts.json", b"{oops"), record("accounts.json", big, offset=1),
                                   record("cdc", big, offset=2), record("accounts.json", b"[1]", offset=3),
                                   record("accounts.json", None, None, offset=4),
                                   record("accounts.json", b'{"id": 2}', offset=5)])
    codes = [(e.failure.code, e.destination.mode if e.destination else None) for e in batch.errors]
    assert codes == [(ErrorCode.NOT_JSON, "upsert"), (ErrorCode.TOO_LARGE, "upsert"), (ErrorCode.TOO_LARGE, "insert"),
                     (ErrorCode.BAD_PACKET, "upsert"), (ErrorCode.MISSING_KEY, "upsert")]
    assert batch.errors[1].failure.message == "record is 320 bytes, the limit is 200"
    assert [len(w.rows) for w in works] == [1]
    assert batch.topics["accounts.json"].passed == 5 and batch.topics["cdc"].passed == 1


@pytest.mark.parametrize(("key", "doc"), [
    (b' {"id": 3, "k": "x"} ', b'{"id": 3, "k": "x"}'),
    (b"42", b'{"id":42}'),
    (b'"abc"', b'{"id":"abc"}'),
    (b"plain text", b'{"id":"plain text"}'),
    (b"\xff", '{"id":"\ufffd"}'.encode()),
])
def test_a_tombstone_key_becomes_the_row_it_deletes(key: bytes, doc: bytes) -> None:
    spec = route_specs(CONFIG)["accounts.json"]
    assert tombstone_row(key, spec) == doc


def test_a_tombstone_without_a_usable_key_is_refused() -> None:
    spec = route_specs(CONFIG)["accounts.json"]
    keyless = route_specs(CONFIG)["plain"]  # no key columns named
    for key, route, message in ((None, spec, "a tombstone without a key deletes nothing"),
                                (b"[1, 2]", spec, "a tombstone's key is not a key value"),
                                (b"5", keyless, "a tombstone's key must be a JSON object of the key columns, or the"
                                                " route must name its one key column (key = [\"id\"])")):
        with pytest.raises(PacketError) as err:
            tombstone_row(key, route)
        assert err.value.failure.code is ErrorCode.MISSING_KEY and str(err.value) == message


def test_a_routed_record_of_exactly_the_limit_is_accepted() -> None:
    value = b'{"id": 1, "pad": "' + b"x" * (200 - 20) + b'"}'
    assert len(value) == 200
    batch, works = Sorter(CONFIG).sort(1, [record("accounts.json", value)])
    assert not batch.errors and [len(w.rows) for w in works] == [1]


# ---------------------------------------------------------------------------------------------------- sort


HEADERS = [("context", CONTEXT_VALUE)]


def packet(table: str, data: object = None) -> bytes:
    return msgspec.json.encode({"pipeline_context": {"destinations": [{"vanity": "wh", "database": "db",
                                                                        "table": table}]},
                                "data": data or {"id": 1}})


def test_a_batch_remembers_the_last_offset_of_each_partition_and_its_timestamps() -> None:
    msgs = [Message(topic="in", partition=p, offset=o, value=packet("t"), headers=HEADERS, timestamp=(1, ts))
            for p, o, ts in ((0, 4, 100), (1, 9, 300), (0, 5, 200), (0, 3, 400))]
    batch, works = Sorter(CONFIG).sort(3, msgs)
    assert batch.seq == 3 and batch.offsets == {("in", 0): 3, ("in", 1): 9}  # the last one seen, in order
    assert (batch.first_ts_ms, batch.last_ts_ms) == (100, 400)
    assert (batch.received, batch.filtered, batch.packets) == (4, 0, 4)
    kept = sum(r.values is not None for r in works[0].rows)  # rows whose decoded values are kept (counted too)
    held = len(packet("t")) + header_bytes(HEADERS) + PACKET_OVERHEAD
    assert works[0].batch == 3 and works[0].nbytes == 4 * held + kept * values_bytes(len(b'{"id":1}'), True, 1)
    empty, none = Sorter(CONFIG).sort(4, [])
    assert (empty.first_ts_ms, empty.last_ts_ms, empty.received, none) == (0, 0, 0, [])


def test_a_record_that_breaks_sort_is_an_internal_error_of_its_table_never_a_crash() -> None:
    class Exploding(Message):  # type: ignore[misc]
        def value(self) -> bytes:
            raise RuntimeError("x" * 1000)

    bad = Exploding(topic="in", partition=0, offset=1, headers=HEADERS, timestamp=(1, 1))
    batch, _works = Sorter(CONFIG).sort(1, [bad])
    (err,) = batch.errors
    assert err.failure.code is ErrorCode.INTERNAL and err.failure.scope is Scope.TABLE and err.destination is None
    assert err.failure.message == ("RuntimeError: " + "x" * 1000)[:300]
    assert batch.topics["in"].passed == 1


def test_a_packet_for_two_tables_counts_its_bytes_in_each() -> None:
    value = msgspec.json.encode({"pipeline_context": {"destinations": [
        {"vanity": "wh", "database": "db", "table": "t"}, {"vanity": "wh", "database": "db", "table": "orders"}]},
        "data": {"id": 1}})
    _batch, works = Sorter(CONFIG).sort(1, [Message(topic="in", partition=0, offset=0, value=value, headers=HEADERS,
                                                     timestamp=(1, 1))])
    held = len(value) + header_bytes(HEADERS) + PACKET_OVERHEAD  # its value and headers, in each table's work
    assert sorted((w.key.table, w.nbytes) for w in works) == [("orders", held), ("t", held)]
    assert bytes(works[0].rows[0].doc) == b'{"id":1}' and works[0].rows[0].keys == ("id",)


def test_every_name_of_a_destination_counts_and_a_long_one_is_never_cached() -> None:
    """A review cached a destination whose metadata column was 1 MB at 1 kB counted: 200 packets held 100 MB."""
    router = Router(CONFIG)
    plain = Destination("wh", "db", "t")
    for long in (Destination("wh", "db", "t", metadata=Metadata(offset="m" * 257)),
                 Destination("wh", "db", "t", mode="upsert", key=("k" * 257,)),
                 Destination("wh", "db", "t", mode="upsert", version="v" * 257),
                 Destination("nope", "db", "t", metadata=Metadata(key="m" * 100_000)),
                 Destination("wh", "db", "t", mode="upsert", key=tuple(f"k{i}" for i in range(Router.MAX_NAMES)))):
        router.route(long)
        assert long not in router._cache
    edge = Destination("wh", "db", "t", metadata=Metadata(offset="m" * 256, key="é" * 256))
    router.route(edge)
    assert edge in router._cache
    assert route_cost(edge) - route_cost(plain) >= 2 * 256 + 2 * 4 * 256
    assert router._cache.bytes == route_cost(edge)
