"""Sort: filtering, routing against config, validation against the catalog, grouping, offsets."""

from __future__ import annotations

import time

import msgspec
from confluent_kafka import Message
from hypothesis import given
from hypothesis import strategies as st

from kapow.config import parse_config
from kapow.contract import CONTEXT_VALUE
from kapow.errors import ErrorCode
from kapow.pipeline.sort import Sorter, validate
from kapow.postgres.catalog import Catalog, Column, Table

CONFIG = parse_config("""
[kafka]
bootstrap_servers = "x:1"
topics = ["in"]
[[destinations]]
vanity = "wh"
databases = ["db", "db2"]
[[destinations]]
vanity = "locked"
databases = ["db"]
schemas = ["public"]
tables = ["public.ok"]
""")

HEADERS = [("context", CONTEXT_VALUE)]


def table(name: str = "t", unique: bool = True) -> Table:
    cols = {
        "id": Column("id", "bigint", "N", True, False, False),
        "name": Column("name", "text", "S", True, False, False),
        "note": Column("note", "text", "S", False, False, False),
        "made": Column("made", "timestamptz", "D", True, True, False),
        "gen": Column("gen", "bigint", "N", False, True, True),
    }
    return Table("public", name, cols, unique, True, frozenset({"id", "name"}))


def msg(value: bytes, offset: int, partition: int = 0, headers: list[tuple[str, bytes]] | None = HEADERS) -> Message:
    return Message(topic="in", partition=partition, offset=offset, key=None, value=value, headers=headers,
                   timestamp=(1, 1_700_000_000_000 + offset))


def packet(data: object, **dest: str) -> bytes:
    d = {"type": "postgres", "vanity": "wh", "database": "db", "schema": "public", "table": "t", **dest}
    return msgspec.json.encode({"pipeline_context": {"destinations": [d]}, "data": data})


def sorter_with(*tables: Table, vanity: str = "wh", database: str = "db") -> tuple[Sorter, Catalog]:
    catalog = Catalog()
    for t in tables:
        catalog.put((vanity, database, t.schema, t.name), t)
    return Sorter(CONFIG, catalog), catalog


def test_filter_counts_and_offsets_cover_everything() -> None:
    sorter, _ = sorter_with(table())
    msgs = [msg(packet({"id": 1, "name": "a"}), 10), msg(b"foreign", 11, headers=None),
            msg(b"foreign", 5, partition=3, headers=[("context", b'{"consumer":{"type":"x"}}')])]
    batch = sorter.sort(1, msgs)
    assert batch.filtered == 2 and batch.packets == 1 and batch.received == 3
    assert batch.offsets == {("in", 0): 11, ("in", 3): 5}
    assert [len(g.rows) for g in batch.groups.values()] == [1]


def test_routing_failures() -> None:
    sorter, _ = sorter_with(table(), table("ok"))
    cases = {
        ErrorCode.UNSUPPORTED_DESTINATION_TYPE: packet({"id": 1}, type="mysql"),
        ErrorCode.UNKNOWN_DESTINATION: packet({"id": 1}, vanity="nope"),
        ErrorCode.UNKNOWN_TABLE: packet({"id": 1}, table='t"; drop table t; --'),
    }
    batch = sorter.sort(1, [msg(v, i) for i, v in enumerate(cases.values())])
    assert [e.failure.code for e in batch.errors] == list(cases)
    unconfigured = sorter.sort(2, [msg(packet({"id": 1}, database="other"), 0)])
    assert unconfigured.errors[0].failure.code is ErrorCode.UNKNOWN_DESTINATION


def test_allowlists() -> None:
    sorter, _ = sorter_with(table("ok"), table("t"), vanity="locked")
    batch = sorter.sort(1, [msg(packet({"id": 1, "name": "a"}, vanity="locked", table="ok"), 0),
                            msg(packet({"id": 1, "name": "a"}, vanity="locked", table="t"), 1),
                            msg(packet({"id": 1, "name": "a"}, vanity="locked", schema="other", table="ok"), 2)])
    assert [e.failure.code for e in batch.errors] == [ErrorCode.FORBIDDEN_DESTINATION] * 2
    assert sum(len(g.rows) for g in batch.groups.values()) == 1


def test_column_validation_fresh_catalog_is_believed() -> None:
    sorter, _ = sorter_with(table())
    batch = sorter.sort(1, [
        msg(packet({"id": 1, "name": "a", "colour": "red"}), 0),
        msg(packet({"id": 2}), 1),
        msg(packet({"id": 3, "name": "c", "gen": 5}), 2),
        msg(packet({"id": 4, "name": "d", "note": "x"}), 3),
    ])
    assert [e.failure.code for e in batch.errors] == [ErrorCode.UNKNOWN_COLUMN, ErrorCode.MISSING_COLUMN,
                                                      ErrorCode.UNKNOWN_COLUMN]
    assert "colour" in batch.errors[0].failure.message and "name" in batch.errors[1].failure.message
    group = next(iter(batch.groups.values()))
    assert [r.keys for r in group.rows] == [("id", "name", "note")]


def test_stale_catalog_is_reread_before_refusing() -> None:
    sorter, catalog = sorter_with(table())
    key = ("wh", "db", "public", "t")
    entry = catalog._entries[key]
    catalog._entries[key] = (entry[0], time.monotonic() - 5)  # read 5 s ago: a new column may exist now
    batch = sorter.sort(1, [msg(packet({"id": 1, "name": "a", "colour": "red"}), 0)])
    assert batch.errors == []
    group = batch.groups[key]
    assert group.reload and len(group.unchecked) == 1


def test_unknown_table_not_cached_goes_to_persist_unchecked() -> None:
    sorter, _ = sorter_with()
    batch = sorter.sort(1, [msg(packet({"id": 1, "name": "a"}), 0)])
    group = next(iter(batch.groups.values()))
    assert group.table is None and len(group.unchecked) == 1 and not group.rows


def test_two_destinations_two_groups() -> None:
    catalog = Catalog()
    catalog.put(("wh", "db", "public", "t"), table())
    catalog.put(("wh", "db2", "public", "t"), table())
    sorter = Sorter(CONFIG, catalog)
    d = {"type": "postgres", "vanity": "wh", "schema": "public", "table": "t"}
    value = msgspec.json.encode({"pipeline_context": {"destinations": [{**d, "database": "db"},
                                                                        {**d, "database": "db2"}]},
                                 "data": {"id": 1, "name": "a"}})
    batch = sorter.sort(1, [msg(value, 0)])
    assert sorted(k[1] for k in batch.groups) == ["db", "db2"]
    assert all(len(g.rows) == 1 for g in batch.groups.values())


def test_no_unique_key_refused_unless_allowed() -> None:
    t = table(unique=False)
    dest = CONFIG.destinations[0]
    failure = validate(t, dest, ("id", "name"), {"id": 1, "name": "a"})
    assert failure is not None and failure.code is ErrorCode.NO_UNIQUE_KEY
    allowed = msgspec.structs.replace(dest, allow_no_unique_key=True)
    assert validate(t, allowed, ("id", "name"), {"id": 1, "name": "a"}) is None


@given(st.dictionaries(st.sampled_from(["id", "name", "note", "made", "gen", "other", "x"]),
                       st.none() | st.integers() | st.text(max_size=5), min_size=1))
def test_validate_matches_the_rule(data: dict[str, object]) -> None:
    """A row is accepted exactly when its keys are writable columns and cover the required ones."""
    t = table()
    keys = tuple(data)
    failure = validate(t, CONFIG.destinations[0], keys, data)
    writable = {"id", "name", "note", "made"}
    expected_ok = set(keys) <= writable and {"id", "name"} <= set(keys)
    assert (failure is None) == expected_ok
    if failure is not None:
        assert failure.code in (ErrorCode.UNKNOWN_COLUMN, ErrorCode.MISSING_COLUMN)
