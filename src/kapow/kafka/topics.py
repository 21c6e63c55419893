"""Create the error topics so that every record of an input topic fits on them.

An error record is the original record plus KaPoW's headers, so an error topic must accept at least what the
largest input topic accepts (its ``max.message.bytes``), plus a margin for the headers. The writer makes sure of
that at start: it creates the user-errors and system-errors topics (and the DLQ's compacted ``.done`` companion)
when they are missing, raises the limit of existing ones that are too small, and tells the error publisher the
size it may count on (a record that still does not fit is cut, never lost: :mod:`kapow.deadletter.publisher`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from kapow.errors import KapowError

log = logging.getLogger(__name__)

HEADER_MARGIN = 64 * 1024  # room for KaPoW's headers on top of the largest input record
BROKER_DEFAULT = 1024 * 1024 + 12  # Kafka's default message.max.bytes


def topic_limits(admin: AdminClient, topics: list[str], timeout: float) -> dict[str, int]:
    """``max.message.bytes`` of each existing topic (missing topics are left out).

    The topics' configs are asked for directly, and a missing topic is the broker's UNKNOWN_TOPIC_OR_PART: no
    metadata request for the whole cluster first, which on a broker of a few thousand topics, on a client whose
    connection is not up yet, cost ~60 ms of every start.
    """
    out: dict[str, int] = {}
    if not topics:
        return out
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in dict.fromkeys(topics)]
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result(timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue  # missing: created by the caller
            log.warning("cannot read the config of topic %s: %s", resource.name, exc)
            continue
        entry = entries.get("max.message.bytes")
        if entry is not None and entry.value is not None:
            out[resource.name] = int(entry.value)
    return out


def prepare_error_topics(admin: AdminClient, *, inputs: list[str], user: str, system: str,
                         partitions: Mapping[str, int] | None = None, timeout: float = 30.0) -> int:
    """Create or enlarge the error topics; return the ``max.message.bytes`` they accept."""
    done = f"{system}.done"
    limits = topic_limits(admin, [*inputs, user, system, done], timeout)
    largest_input = max([limits.get(t, BROKER_DEFAULT) for t in inputs] or [BROKER_DEFAULT])
    wanted = max(largest_input + HEADER_MARGIN, BROKER_DEFAULT)
    parts = {user: 3, system: 6, **(partitions or {})}
    new = []
    for topic in (user, system, done):
        if topic in limits:
            continue
        config = {"max.message.bytes": str(wanted)}
        if topic == done:
            config["cleanup.policy"] = "compact"
        # -1: the broker's default.replication.factor; an error record is the only copy of a failed packet
        new.append(NewTopic(topic, num_partitions=parts.get(topic, 1), replication_factor=-1, config=config))
    if new:
        for topic, future in admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout).items():
            try:
                future.result(timeout)
                log.info("created topic %s (max.message.bytes %d)", topic, wanted)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise KapowError(f"cannot create error topic {topic}: {exc.args[0]}") from None
    small = [t for t in (user, system) if t in limits and limits[t] < wanted]
    if small:
        resources = [ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
            ConfigEntry("max.message.bytes", str(wanted), incremental_operation=AlterConfigOpType.SET)])
            for t in small]
        for resource, future in admin.incremental_alter_configs(resources).items():
            try:
                future.result(timeout)
                log.info("raised max.message.bytes of %s to %d to fit the largest input record", resource.name,
                         wanted)
            except KafkaException as exc:  # not allowed to: records too large are cut to fit, never lost
                log.warning("cannot raise max.message.bytes of %s (%s); records larger than %d bytes will be cut",
                            resource.name, exc.args[0], limits[resource.name])
                wanted = min(wanted, limits[resource.name])
    return wanted
