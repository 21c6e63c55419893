"""What a record asks for (the audit's reading of the packet contract), and the audit's report."""

from __future__ import annotations

import msgspec
import pytest

from kapow.audit import AuditReport, Missing, PartitionReport, parse_offsets
from kapow.audit.asks import MAX_KEYDOC_RAW, Asker, Mode, keydoc_of
from kapow.audit.feed import esc
from kapow.contract import CONTEXT_HEADER, CONTEXT_VALUE, make_packet
from kapow.errors import KapowError

WH = {"type": "postgres", "vanity": "wh", "database": "db", "schema": "public", "table": "t"}


def test_destinations_modes_and_keys_are_read() -> None:
    value = make_packet([WH, {**WH, "table": "u", "mode": "delete", "key": ["a", "b"]},
                         {**WH, "schema": "s", "mode": "upsert", "version": "v"}], {"a": 1, "b": "x"})
    asked = Asker().asks(value)
    assert asked is not None
    assert [(a.label, a.mode, a.key) for a in asked.asks] == [
        ("wh/db/public.t", Mode.INSERT, ()), ("wh/db/public.u", Mode.DELETE, ("a", "b")),
        ("wh/db/s.t", Mode.UPSERT, ())]
    assert msgspec.json.decode(asked.keydoc) == {"a": 1, "b": "x"}


def test_a_copy_asks_for_the_destination_it_was_republished_for_alone() -> None:
    # a hostile run: redriven copies land only where they were parked (kapow.pipeline.sort), and the audit, which
    # read them as asking for every destination of their packet, reported them missing in the others
    from kapow.audit.asks import Asked
    from kapow.contract import Destination, destination_json

    keyed = {**WH, "key": ["a"]}
    value = make_packet([WH, {**WH, "table": "u"}, keyed], {"a": 1})

    def asked_for(headers: list[tuple[str, bytes | None]]) -> list[tuple[str, tuple[str, ...]]]:
        asked = Asker().ask("in", [(CONTEXT_HEADER, CONTEXT_VALUE), *headers], value, None)
        assert isinstance(asked, Asked)
        return [(a.table, a.key) for a in asked.asks]

    for parked, expected in ((WH, [("t", ())]), ({**WH, "table": "u"}, [("u", ())]), (keyed, [("t", ("a",))])):
        header = destination_json(msgspec.convert(parked, Destination))
        assert asked_for([("kapow-attempt", b"2"), ("kapow-origin", b"in/0/5"),
                          ("kapow-destination", header)]) == expected
        # not a copy (no kapow-origin): the header is the client's own, and ignored
        assert len(asked_for([("kapow-attempt", b"2"), ("kapow-destination", header)])) == 3
    elsewhere = destination_json(Destination("wh", "db", "gone"))  # names none of them: all, as the writer does
    assert len(asked_for([("kapow-origin", b"in/0/5"), ("kapow-destination", elsewhere)])) == 3


def test_what_the_writer_cannot_read_asks_for_nothing() -> None:
    asker = Asker()
    for value in (None, b"{not json", b'{"pipeline_context": {"destinations": []}, "data": {"a": 1}}',
                  b'{"pipeline_context": {"destinations": [{"vanity": 1}]}, "data": {"a": 1}}',
                  make_packet([WH], [1, 2])):
        assert asker.asks(value) is None, value
    assert asker.is_packet([(CONTEXT_HEADER, CONTEXT_VALUE)])
    assert not asker.is_packet([("other", b"x")]) and not asker.is_packet(None)


def test_big_data_keeps_only_values_a_key_can_hold() -> None:
    data = {"id": 7, "name": "n", "blob": "x" * MAX_KEYDOC_RAW, "nested": {"a": 1}, "list": [1]}
    keydoc = keydoc_of(msgspec.json.encode(data))
    assert keydoc is not None and msgspec.json.decode(keydoc) == {"id": 7, "name": "n"}
    small = b'{"id": 7, "nested": {"a": 1}, "name": "Zo\xc3\xab"}'
    assert keydoc_of(small) == small  # short data travels as it is
    assert keydoc_of(b'{"id": "\xff"}') is None  # not UTF-8: the writer refuses it, the COPY would too


def test_copy_text_escaping() -> None:
    assert esc(b'a\\b\tc\nd\re') == b"a\\\\b\\tc\\nd\\re"
    assert esc(b"plain") == b"plain"


def test_parse_offsets() -> None:
    assert parse_offsets("0:10, 2:0") == {0: 10, 2: 0}
    for bad in ("0", "a:1", "0:-1", "0:1,"):
        with pytest.raises(KapowError, match="PARTITION:OFFSET"):
            parse_offsets(bad)


def test_report_sums_partitions_and_prints_a_table() -> None:
    report = AuditReport(group="g", scratch="wh/db", partitions=[
        PartitionReport("events", 0, 0, 10, 8, total=10, filtered=1, landed=6, pending=2, missing=1),
        PartitionReport("events", 1, 5, 9, -1, total=4, pending=4, landed=0, unverified=0)])
    report.missing_examples = [Missing("events", 0, 3, "wh/db/public.t: row not in the state its mode implies")]
    body = report.to_json()
    assert (body["total"], body["landed"], body["pending"], body["missing"], body["filtered"]) == (14, 6, 6, 1, 1)
    assert not report.ok and body["missing_examples"][0]["offset"] == 3
    assert body["partitions"][1]["committed"] == -1
    table = report.table().splitlines()
    assert table[0].split()[:5] == ["topic", "part", "offsets", "committed", "total"]
    assert table[-1].split() == ["all", "14", "1", "6", "0", "0", "0", "6", "1"]
    assert table[2].split()[3] == "-"  # nothing committed on partition 1
