"""The Kafka clients a writer uses, made in one place and passed in, so the loop can run on a fake broker.

:class:`~kapow.pipeline.runner.Writer` takes a :class:`KafkaClients`: the real one here builds librdkafka
clients from the config; the unit tests pass an in-memory one (``tests/unit/fake_kafka.py``), as arroyo's local
backend does, so that revoke, lost partitions and commit ordering are tested without processes.
"""

from __future__ import annotations

from typing import Any, Protocol

from kapow.config import Config


class KafkaClients(Protocol):
    """What a writer needs from Kafka."""

    def prepare_topics(self) -> int:
        """Create or enlarge the error topics; the bytes an error record may have."""

    def consumer(self) -> Any:
        """A consumer for the input topics (``confluent_kafka.Consumer``'s interface)."""

    def producer(self, max_bytes: int) -> Any:
        """A producer for error records (``confluent_kafka.Producer``'s interface)."""


class LibrdkafkaClients:
    """The real clients, configured from the config (``kapow.kafka.clients`` holds the settings)."""

    def __init__(self, config: Config) -> None:
        self._config = config

    def prepare_topics(self) -> int:
        from confluent_kafka.admin import AdminClient

        from kapow.kafka.clients import admin_config
        from kapow.kafka.topics import prepare_error_topics

        k = self._config.kafka
        admin = AdminClient(admin_config(k.bootstrap_servers, k.settings))
        return prepare_error_topics(admin, inputs=self._config.consumed_topics, user=k.user_errors_topic,
                                    system=k.system_errors_topic)

    def consumer(self) -> Any:
        from kapow.kafka.clients import make_consumer

        k = self._config.kafka
        return make_consumer(k.bootstrap_servers, k.group_id, k.settings)

    def producer(self, max_bytes: int) -> Any:
        from kapow.kafka.clients import make_producer

        k = self._config.kafka
        # librdkafka checks message.max.bytes before compression, the broker after it: let the broker decide
        # (a record that still does not fit is cut by the publisher, never lost)
        return make_producer(k.bootstrap_servers, k.settings, **{"message.max.bytes": max(max_bytes, 64 * 1024 * 1024)})
