"""The redrive's verdict per parked record, the headers of its republished copy, and its consumers' settings."""

from __future__ import annotations

from confluent_kafka import Message

from kapow.config import Config, parse_config
from kapow.contract import TableKey
from kapow.deadletter.redrive import consumer_settings, judge, republished_headers
from kapow.kafka.clients import consumer_config

DEST = b'{"type":"postgres","vanity":"wh","database":"db","schema":"public","table":"t"}'


def parked(code: bytes = b"database_unavailable", attempt: bytes = b"1", failed_at: int = 1_000, *,
           topic: bytes = b"in", extra: list[tuple[str, bytes | None]] | None = None, offset: int = 7) -> Message:
    headers = [("context", b"x"), ("client", None), ("kapow-error-code", code), ("kapow-attempt", attempt),
               ("kapow-failed-at", str(failed_at).encode()), ("kapow-destination", DEST),
               ("kapow-source-topic", topic), ("kapow-source-partition", b"2"), ("kapow-source-offset", b"41"),
               *(extra or [])]
    return Message(topic="sys", partition=1, offset=offset, key=b"k", value=b"v", headers=headers)


def verdict(msg: Message, *, healthy: bool = True, now_ms: int = 60_000, handled: set[tuple[int, int]] | None = None
            ) -> str:
    asked: list[TableKey] = []

    def health(key: TableKey) -> bool:
        asked.append(key)
        return healthy

    v = judge(msg, topics=frozenset({"in"}), max_attempts=5, delay_s=10, now_ms=now_ms, handled=handled or set(),
              health=health)
    if v.action == "redrive":
        assert asked == [TableKey("wh", "db", "public", "t")]
    return v.action


def test_redrives_what_was_parked_for_a_destination_down_once_it_is_healthy() -> None:
    for code in (b"database_unavailable", b"timeout", b"too_many_connections", b"database_shutting_down"):
        assert verdict(parked(code)) == "redrive"
    assert verdict(parked(), healthy=False) == "wait"
    assert verdict(parked(failed_at=55_000)) == "wait"  # not yet redrive_delay_s after it failed


def test_leaves_for_an_operator_what_a_redrive_cannot_fix() -> None:
    assert verdict(parked(b"internal")) == "skip"
    assert verdict(parked(attempt=b"5")) == "skip"
    assert verdict(parked(topic=b"someone-else")) == "skip"
    assert verdict(parked(extra=[("kapow-value-truncated", b"2000000")])) == "skip"
    assert verdict(parked(), handled={(1, 7)}) == "skip"  # rescheduled or purged by an operator already
    assert verdict(parked(attempt=b"not a number")) == "skip"


def test_a_copy_carries_the_client_headers_one_more_attempt_and_its_origin() -> None:
    headers = republished_headers(parked(attempt=b"2"))
    assert ("context", b"x") in headers and ("client", None) in headers
    assert ("kapow-attempt", b"3") in headers
    assert ("kapow-origin", b"in/2/41") in headers
    assert not any(k in ("kapow-error-code", "kapow-source-topic", "kapow-failed-at") for k, _ in headers)
    again = republished_headers(parked(extra=[("kapow-origin", b"first/0/1")]))
    assert [v for k, v in again if k == "kapow-origin"] == [b"first/0/1"]  # the first origin travels


def _config(settings: str = "") -> Config:
    return parse_config(f"""
[kafka]
bootstrap_servers = "127.0.0.1:9092"
group_id = "g"
topics = ["in"]
{settings}
[[destinations]]
vanity = "wh"
databases = ["db"]
""")


def test_every_consumer_asks_an_idle_broker_every_half_second() -> None:
    config = _config()
    records, markers = consumer_settings(config)
    writer = consumer_config("127.0.0.1:9092", "g", config.kafka.settings)
    assert records["fetch.wait.max.ms"] == markers["fetch.wait.max.ms"] == writer["fetch.wait.max.ms"] == 500
    assert writer["fetch.min.bytes"] == 1  # answered at the first record: the wait is not the latency
    assert records["isolation.level"] == markers["isolation.level"] == "read_committed"
    assert (records["group.id"], markers["group.id"]) == ("g.redrive", "g.redrive.markers")
    assert markers["enable.partition.eof"] is True and records["enable.partition.eof"] is False


def test_an_operators_fetch_wait_wins_over_the_writers_own() -> None:
    config = _config('[kafka.settings]\n"fetch.wait.max.ms" = 100\n')
    records, markers = consumer_settings(config)
    writer = consumer_config("127.0.0.1:9092", "g", config.kafka.settings)
    assert records["fetch.wait.max.ms"] == markers["fetch.wait.max.ms"] == writer["fetch.wait.max.ms"] == 100
