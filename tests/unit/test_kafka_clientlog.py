"""librdkafka's lines and errors through KaPoW's logging: rate-limited, demoted where KaPoW says it better, and
the one line for an unreachable broker names the configured address."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from kapow.kafka.clientlog import BrokerErrors, LibrdkafkaLog, RateLimiter, client_logging, reason_of
from kapow.kafka.clients import admin_config, consumer_config, producer_config

REFUSED = ("127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused "
           "(after 0ms in state CONNECT)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_admits_once_per_window_and_counts_the_rest() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, clock=clock)
    assert limiter.admit("a") == (True, 0)
    for _ in range(5):
        clock.now += 1
        assert limiter.admit("a") == (False, 0)
    assert limiter.admit("b") == (True, 0)  # another message is not held back by the first
    clock.now += 5.0  # 10 s after the first admission
    assert limiter.admit("a") == (True, 5)
    assert limiter.admit("a") == (False, 0)


def test_rate_limiter_is_bounded_in_keys() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, max_keys=8, clock=clock)
    for i in range(100):
        assert limiter.admit(f"k{i}")[0]
    assert len(limiter._seen) <= 8
    assert limiter.admit("k99") == (False, 0)  # the newest are kept


def test_reason_of_keeps_the_human_part() -> None:
    assert reason_of(REFUSED) == "Connection refused"
    assert reason_of("h:9092/bootstrap: Failed to resolve 'h:9092': Name or service not known (after 1ms in state "
                     "CONNECT)") == "Failed to resolve 'h:9092': Name or service not known"
    assert reason_of("1/1 brokers are down") == "1/1 brokers are down"


def test_librdkafka_lines_are_rate_limited_and_fail_lines_demoted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    sink = LibrdkafkaLog(RateLimiter(10.0, clock=clock))
    caplog.set_level(logging.DEBUG, logger="kapow.kafka.librdkafka")
    for i in range(50):  # what a poll loop serves in a few seconds with the broker down
        sink.log(logging.WARNING, "%s [%s] %s", "MAXPOLL", "rdkafka#consumer-1",
                 f"poll interval exceeded (after {i}ms)")
        sink.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", REFUSED)
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [(logging.WARNING, "librdkafka MAXPOLL: poll interval exceeded (after 0ms)"),
                       (logging.DEBUG, f"librdkafka FAIL: {REFUSED}")]
    clock.now += 10
    sink.log(logging.WARNING, "%s [%s] %s", "MAXPOLL", "rdkafka#consumer-1", "poll interval exceeded (after 7ms)")
    assert caplog.records[-1].getMessage().endswith("(49 similar line(s) suppressed in the last 10 s)")


class _Err:
    """A stand-in for the KafkaError librdkafka hands the error_cb (KafkaError cannot be built with a message)."""

    def __init__(self, code: int, text: str, *, fatal: bool = False) -> None:
        self._code, self._text, self._fatal = code, text, fatal

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return self._text

    def name(self) -> str:
        return str(self._code)

    def fatal(self) -> bool:
        return self._fatal


def test_broker_errors_name_the_bootstrap_address_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    cb = BrokerErrors("kafka-1:9092,kafka-2:9092", limiter=RateLimiter(10.0, clock=clock))
    caplog.set_level(logging.DEBUG, logger="kapow.kafka")
    for _ in range(30):
        cb(_Err(KafkaError._TRANSPORT, REFUSED))  # type: ignore[arg-type]
        cb(_Err(KafkaError._ALL_BROKERS_DOWN, "2/2 brokers are down"))  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "Kafka at kafka-1:9092,kafka-2:9092 cannot be reached: Connection refused"]
    assert cb.last_reason == "Connection refused"
    cb(_Err(KafkaError._FATAL, "idempotent producer fenced", fatal=True))  # type: ignore[arg-type]
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage() == "Kafka at kafka-1:9092,kafka-2:9092: idempotent producer fenced"


def test_quiet_broker_errors_only_remember(caplog: pytest.LogCaptureFixture) -> None:
    cb = BrokerErrors("k:9092", quiet=True)
    caplog.set_level(logging.DEBUG)
    cb(_Err(KafkaError._TRANSPORT, REFUSED))  # type: ignore[arg-type]
    assert caplog.records == [] and cb.last_reason == "Connection refused"


def test_every_client_config_routes_logs_and_errors_each_with_its_own_instances() -> None:
    configs = [consumer_config("b:1", "g"), producer_config("b:1"), admin_config("b:1")]
    for conf in configs:
        assert isinstance(conf["logger"], LibrdkafkaLog) and isinstance(conf["error_cb"], BrokerErrors)
        assert conf["error_cb"].bootstrap == "b:1"
    assert len({id(c["logger"]) for c in configs}) == 3  # no limiter shared between clients
    mine = client_logging("x:1")
    assert producer_config("b:1", **mine)["logger"] is mine["logger"]  # a caller's own wins
