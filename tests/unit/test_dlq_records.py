"""The dead-letter queue's pure parts: decoding error records leniently, filters, markers and copies."""

from __future__ import annotations

import msgspec
from confluent_kafka import Message

from kapow.deadletter.done import Action, Handled, _action, marker_key, marker_value
from kapow.deadletter.mover import Outcome, Verb, copy_headers
from kapow.deadletter.records import (
    HEADER_BYTES,
    KEY_BYTES,
    DlqFilter,
    DlqRecord,
    bound,
    decode_record,
    label_of,
    parse_origin,
    trim,
)

DEST = {"type": "postgres", "vanity": "wh", "database": "db", "schema": "sales", "table": "orders"}


def message(headers: list[tuple[str, bytes | None]], *, partition: int = 2, offset: int = 7) -> Message:
    return Message(topic="kapow.errors.system", partition=partition, offset=offset, key=b"k", value=b'{"x": 1}',
                   headers=headers)


def written(**extra: bytes | None) -> list[tuple[str, bytes | None]]:
    headers: dict[str, bytes | None] = {
        "context": b'{"consumer": {"type": "data_pipeline"}}', "kapow-error-class": b"system",
        "kapow-error-code": b"timeout", "kapow-error-message": b"slow", "kapow-destination": msgspec.json.encode(DEST),
        "kapow-source-topic": b"events", "kapow-source-partition": b"1", "kapow-source-offset": b"41",
        "kapow-source-timestamp": b"1700000000000", "kapow-attempt": b"2", "kapow-failed-at": b"1700000001000"}
    headers.update(extra)
    return list(headers.items())


def test_a_record_decodes_with_its_label_and_origin() -> None:
    r = decode_record(message(written()))
    assert (r.id, r.code, r.error_class, r.attempt, r.failed_at_ms) == ("2:7", "timeout", "system", 2, 1700000001000)
    assert r.label == "wh/db/sales.orders"
    assert r.origin == "events/1/41"  # no kapow-origin: the record's own source coordinates
    assert r.to_json(with_value=False)["destination_label"] == "wh/db/sales.orders"


def test_decoding_tolerates_unknown_and_null_headers_and_richer_destinations() -> None:
    richer = msgspec.json.encode({**DEST, "mode": "upsert", "key": ["a", "b"]})
    r = decode_record(message(written(**{"kapow-destination": richer, "kapow-something-new": b"x", "trace": None,
                                         "kapow-origin": b"orders.in/4/99", "kapow-value-truncated": b"2000000"})))
    assert r.destination is not None and r.destination["key"] == ["a", "b"] and r.label == "wh/db/sales.orders"
    assert r.origin == "orders.in/4/99" and r.value_truncated == 2_000_000
    assert ("trace", None) not in r.headers and ("kapow-something-new", b"x") in r.headers
    broken = decode_record(message([("kapow-attempt", b"many"), ("kapow-destination", b"[1]")]))
    assert (broken.attempt, broken.source_offset, broken.destination, broken.label, broken.origin) == (
        1, -1, None, "", "")


def test_filter_by_pasted_label_substring_code_and_time() -> None:
    r = decode_record(message(written()))
    assert DlqFilter(destination=r.label).matches(r)
    assert DlqFilter(destination="wh/db/").matches(r)
    assert not DlqFilter(destination="wh/db/orders").matches(r)  # the schema is part of the label
    assert not DlqFilter(code="database_unavailable").matches(r)
    assert DlqFilter(since_ms=1700000001000, until_ms=1700000001000).matches(r)
    assert not DlqFilter(since_ms=1700000001001).matches(r)
    assert DlqFilter().empty and not DlqFilter(code="x").empty


def test_copies_keep_the_origin_across_hops_and_count_the_attempt() -> None:
    first = decode_record(message(written()))
    headers = dict(copy_headers(first))
    assert headers == {"context": b'{"consumer": {"type": "data_pipeline"}}', "kapow-attempt": b"3",
                       "kapow-origin": b"events/1/41", "kapow-destination": dict(written())["kapow-destination"]}
    again = decode_record(message(written(**{"kapow-origin": b"events/0/5", "kapow-source-offset": b"900"})))
    assert dict(copy_headers(again))["kapow-origin"] == b"events/0/5"


def test_markers_one_byte_per_offset_of_the_snapshot() -> None:
    handled = Handled({0: (100, 110), 1: (0, 0)})
    handled.set(0, 105, Action.PURGED)
    handled.set(0, 109, Action.REPUBLISHED)
    handled.set(0, 110, Action.PURGED)  # newer than the snapshot: ignored
    handled.set(3, 1, Action.PURGED)  # a partition we did not read: ignored
    assert (0, 105) in handled and (0, 109) in handled and (0, 110) not in handled and (0, 99) not in handled
    assert handled.action(0, 109) is Action.REPUBLISHED and handled.count == 2
    handled.set(0, 105, Action.NONE)  # a tombstone un-handles
    assert (0, 105) not in handled and handled.count == 1
    assert _action(marker_value("redriven")) is Action.REPUBLISHED  # the lead's automatic redrive
    assert _action(marker_value("purged")) is Action.PURGED and _action(b"garbage") is Action.REPUBLISHED
    assert marker_key(2, 7) == b"2:7"


def test_origin_parsing_allows_dots_and_refuses_malformed() -> None:
    assert parse_origin("orders.v1/3/42") == ("orders.v1", 3, 42)
    assert parse_origin("a/b/c/3/42") == ("a/b/c", 3, 42)
    for bad in ("", "x/1", "x/a/1", "/1/2", "x/1/-2"):
        assert parse_origin(bad) is None


def test_trim_and_outcome_json() -> None:
    r = decode_record(message(written()))
    cut = trim(r, 3, headers=False)
    assert cut.record.value == b'{"x' and cut.size == 8 and cut.truncated and cut.record.headers == ()
    out = Outcome(Verb.RESCHEDULE, 2, ["0:1", "0:2"], ["0:3"])
    assert out.to_json() == {"action": "rescheduled", "count": 2, "ids": ["0:1", "0:2"], "skipped": ["0:3"]}
    assert Outcome(Verb.PURGE).to_json() == {"action": "purged", "count": 0, "ids": []}
    assert label_of(None) == "" and label_of({"vanity": "v", "database": "d", "table": "t"}) == "v/d/public.t"


def test_records_without_a_topic_or_whole_value_are_not_rescheduled() -> None:
    from kapow.deadletter.mover import reschedulable

    assert reschedulable(decode_record(message(written())))
    assert not reschedulable(decode_record(message(written(**{"kapow-source-topic": None}))))
    assert not reschedulable(decode_record(message(written(**{"kapow-value-truncated": b"5000000"}))))


def test_a_destination_filter_selects_whole_names_never_a_neighbour() -> None:
    """A pasted label selected every label containing it: purging ``a/h1_a/public.t`` purged ``public.tt`` and
    vanity ``ba``'s table as well (a review, 2026-11-27)."""

    def label(vanity: str, table: str) -> DlqRecord:
        dest = msgspec.json.encode({"vanity": vanity, "database": "h1_a", "table": table})
        return decode_record(message(written(**{"kapow-destination": dest})))

    t, tt, ba = label("a", "t"), label("a", "tt"), label("ba", "t")
    assert [DlqFilter(destination="a/h1_a/public.t").matches(r) for r in (t, tt, ba)] == [True, False, False]
    for whole_database in ("a/h1_a/", "a/h1_a", "a/", "a"):
        assert [DlqFilter(destination=whole_database).matches(r) for r in (t, tt, ba)] == [True, True, False]
    for nothing in ("h1_a", "public.t", "a/h1", "a/h1_a/public", "a/h1_a/public.", "/", "t"):
        assert not any(DlqFilter(destination=nothing).matches(r) for r in (t, tt, ba)), nothing
    assert not DlqFilter(destination="a").matches(decode_record(message([]))), "no destination: no label"


def test_a_bounded_record_cuts_key_and_headers_and_says_so() -> None:
    """Headers and key were kept whole beside a value cut at 16 KiB: a 1 MB header came back whole."""
    r = decode_record(Message(topic="u", partition=0, offset=1, key=b"k" * 5000, value=b"v" * 20_000,
                              headers=[("big", b"b" * 1_000_000), *(("h" * 2000, b"s") for _ in range(40)),
                                       *written()]))
    t = bound(r, 16 * 1024)
    assert t.record.key == b"k" * KEY_BYTES and t.key_size == 5000 and t.truncated and t.size == 20_000
    assert sum(len(k) + len(v) for k, v in t.record.headers) <= 16 * 1024
    assert all(len(k) <= HEADER_BYTES and len(v) <= HEADER_BYTES for k, v in t.record.headers)
    assert t.headers_size == 3 + 1_000_000 + 40 * 2001 + sum(len(k) + len(v or b"") for k, v in written())
    assert dict(t.record.headers)["kapow-error-code"] == b"timeout", "the small own headers still fit"
    assert t.cut_json() == {"size": 20_000, "truncated": True, "key_truncated": True, "headers_truncated": True,
                            "key_size": 5000, "headers_size": t.headers_size}
    small = bound(decode_record(message(written())), 16 * 1024)
    assert small.record == decode_record(message(written())) and small.key_size is None is small.headers_size
    assert not small.cut_json()["key_truncated"] and not small.cut_json()["headers_truncated"]
