"""Sizing the error topics against an admin client that answers as told: races, refusals, limits met exactly."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from kapow.errors import KapowError
from kapow.kafka.topics import BROKER_DEFAULT, HEADER_MARGIN, prepare_error_topics, topic_limits


def done(value: Any = None, error: BaseException | None = None) -> Future[Any]:
    f: Future[Any] = Future()
    if error is None:
        f.set_result(value)
    else:
        f.set_exception(error)
    return f


class Entry:
    def __init__(self, value: str | None) -> None:
        self.value = value


class Admin:
    """Topics and their max.message.bytes; ``create_error``/``alter_error``/``describe_error`` say what fails."""

    def __init__(self, limits: dict[str, int | None]) -> None:
        self.limits = limits
        self.created: list[Any] = []
        self.altered: list[Any] = []
        self.create_error: dict[str, BaseException] = {}
        self.alter_error: dict[str, BaseException] = {}
        self.describe_error: dict[str, BaseException] = {}

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Future[Any]]:
        out = {}
        for r in resources:
            if r.name not in self.limits:  # as the broker answers for a topic that does not exist
                out[r] = done(None, KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "Unknown topic")))
                continue
            value = self.limits[r.name]
            entries = {} if value is None else {"max.message.bytes": Entry(str(value))}
            out[r] = done(entries, self.describe_error.get(r.name))
        return out

    def create_topics(self, new: list[Any], operation_timeout: float, request_timeout: float) -> dict[str, Future[Any]]:
        self.created += new
        return {t.topic: done(None, self.create_error.get(t.topic)) for t in new}

    def incremental_alter_configs(self, resources: list[Any]) -> dict[Any, Future[Any]]:
        self.altered += resources
        return {r: done(None, self.alter_error.get(r.name)) for r in resources}


def kafka_error(text: str) -> KafkaException:
    return KafkaException(KafkaError(KafkaError._INVALID_ARG, text))


def test_limits_are_read_for_existing_topics_and_a_topic_that_cannot_be_described_is_skipped(
        caplog: pytest.LogCaptureFixture) -> None:
    admin = Admin({"a": 100, "b": 200, "c": None, "d": 5})
    admin.describe_error["b"] = kafka_error("denied")
    with caplog.at_level(logging.WARNING):
        assert topic_limits(admin, ["a", "b", "c", "d", "missing"], 5) == {"a": 100, "d": 5}  # type: ignore[arg-type]
    assert "cannot read the config of topic b" in caplog.text
    assert "topic missing" not in caplog.text  # a missing topic is not a refusal: the caller creates it
    assert topic_limits(Admin({}), ["x"], 5) == {}  # type: ignore[arg-type]


def test_a_topic_created_by_someone_else_meanwhile_is_fine_any_other_refusal_is_one_line() -> None:
    admin = Admin({"in": 2_000_000})
    admin.create_error["user"] = kafka_error("TOPIC_ALREADY_EXISTS: made by another writer")
    wanted = prepare_error_topics(admin, inputs=["in"], user="user", system="sys")  # type: ignore[arg-type]
    assert wanted == 2_000_000 + HEADER_MARGIN
    assert [(t.topic, t.num_partitions, t.replication_factor) for t in admin.created] == [
        ("user", 3, -1), ("sys", 6, -1), ("sys.done", 1, -1)]
    assert [t.config for t in admin.created] == [{"max.message.bytes": str(wanted)}] * 2 + [
        {"max.message.bytes": str(wanted), "cleanup.policy": "compact"}]
    refusing = Admin({"in": 10})
    refusing.create_error["sys"] = kafka_error("POLICY_VIOLATION")
    with pytest.raises(KapowError, match=r"^cannot create error topic sys: KafkaError.*POLICY_VIOLATION"):
        prepare_error_topics(refusing, inputs=["in"], user="user", system="sys")  # type: ignore[arg-type]


def test_small_error_topics_are_raised_and_one_at_the_limit_exactly_is_left_alone(
        caplog: pytest.LogCaptureFixture) -> None:
    wanted = BROKER_DEFAULT + HEADER_MARGIN
    admin = Admin({"user": wanted, "sys": wanted - 1, "sys.done": 1})
    assert prepare_error_topics(admin, inputs=[], user="user", system="sys") == wanted  # type: ignore[arg-type]
    assert admin.created == []
    assert [r.name for r in admin.altered] == ["sys"]
    (entry,) = admin.altered[0].incremental_configs
    assert (entry.name, entry.value) == ("max.message.bytes", str(wanted))
    refused = Admin({"user": 1000, "sys": 2000, "sys.done": 1})
    refused.alter_error = {"user": kafka_error("denied"), "sys": kafka_error("denied")}
    with caplog.at_level(logging.WARNING):
        got = prepare_error_topics(refused, inputs=[], user="user", system="sys")  # type: ignore[arg-type]
    assert got == 1000, "what the error topics take is what the publisher may count on"
    assert "records larger than 1000 bytes will be cut" in caplog.text
