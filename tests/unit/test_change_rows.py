"""Debezium change events turned into rows by the lane, with the target table's column types."""

from __future__ import annotations

import msgspec
import pytest
from confluent_kafka import Message

from kapow.config import parse_config
from kapow.errors import ErrorCode, PacketError
from kapow.pipeline.route import route_specs
from kapow.pipeline.unit import decode_change_row
from kapow.pipeline.work import Row
from kapow.postgres.catalog import Column, Table

CONFIG = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                      '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\nmodes = ["insert", "upsert", "delete"]\n'
                      '[[destinations]]\nvanity = "keep"\ndatabases = ["db"]\n'
                      '[pipeline]\nmax_json_depth = 4\n'
                      '[[routes]]\ntopic = "cdc"\nvanity = "wh"\ndatabase = "db"\ntable = "t"\nformat = "debezium"\n'
                      'metadata = { lsn = "at_lsn", ts_ms = "at_ts" }\n'
                      '[[routes]]\ntopic = "nodel"\nvanity = "keep"\ndatabase = "db"\ntable = "t"\n'
                      'format = "debezium"\n')
SPECS = route_specs(CONFIG)


def table() -> Table:
    cols = {"id": Column("id", "bigint", True, False, False), "born": Column("born", "date", False, False, False),
            "doc": Column("doc", "jsonb", False, False, False)}
    return Table("public", "t", cols, ("id",), (("id",),), False, True, True, True)


def row(event: dict[str, object], route: str = "cdc", key: bytes | None = None) -> Row:
    spec = SPECS[route]
    value = msgspec.json.encode(event)
    return Row(Message(topic=route, partition=0, offset=1, key=key, value=value), b"", (), spec.dests["upsert"], spec)


def test_an_upsert_is_converted_with_the_column_types_and_stamped_with_its_source() -> None:
    t = table()
    out = decode_change_row(t, row({"op": "c", "after": {"id": 1, "born": 19000}, "source": {"lsn": 7, "ts_ms": 9}}))
    assert out is not None and out.dest.mode == "upsert"
    assert msgspec.json.decode(out.doc) == {"id": 1, "born": "2022-01-08", "at_lsn": 7, "at_ts": 9}
    assert out.keys == ("id", "born", "at_lsn", "at_ts")
    decoder = t.change_decoder
    assert decoder is not None
    decode_change_row(t, row({"op": "u", "after": {"id": 1}}))
    assert t.change_decoder is decoder, "the decoder is made once per table"


def test_a_delete_is_keyed_by_its_before_image_or_else_by_the_record_key() -> None:
    t = table()
    by_before = decode_change_row(t, row({"op": "d", "before": {"id": 3, "born": None}}))
    assert by_before is not None and by_before.dest.mode == "delete"
    assert msgspec.json.decode(by_before.doc)["id"] == 3
    by_key = decode_change_row(t, row({"op": "d", "before": None}, key=b'{"id": 4}'))
    assert by_key is not None and msgspec.json.decode(by_key.doc)["id"] == 4
    with pytest.raises(PacketError) as refused:
        decode_change_row(t, row({"op": "d", "before": {"id": 3}}, route="nodel"))
    assert refused.value.failure.code is ErrorCode.FORBIDDEN_MODE
    assert str(refused.value) == ("a delete event, and 'keep' does not allow deletes (add \"delete\" to its"
                                  " modes)")


def test_skips_are_none_and_a_row_as_deep_as_allowed_is_kept() -> None:
    t = table()
    assert decode_change_row(t, row({"op": "t"})) is None
    assert decode_change_row(t, row({"op": "m"})) is None
    deep = {"id": 1, "doc": [[[1]]]}  # nested as deep as max_json_depth (4) allows, counting the row itself
    out = decode_change_row(t, row({"op": "c", "after": deep}))
    assert out is not None and msgspec.json.decode(out.doc)["doc"] == [[[1]]]


def test_a_row_nested_too_deep_once_its_values_are_converted_is_refused() -> None:
    # each Json string is within max_json_depth (4), but inside a three-level jsonb[] the row as written is 8 deep
    cols = {"id": Column("id", "bigint", True, False, False), "docs": Column("docs", "jsonb[]", False, False, False)}
    t = Table("public", "t", cols, ("id",), (("id",),), False, True, True, True)
    with pytest.raises(PacketError, match="nested deeper than 6 levels"):
        decode_change_row(t, row({"op": "c", "after": {"id": 1, "docs": [[['[[[["x"]]]]']]]}}, route="nodel"))
    fine = decode_change_row(t, row({"op": "c", "after": {"id": 1, "docs": [['[["x"]]']]}}, route="nodel"))
    assert fine is not None and fine.keys == ("id", "docs")
