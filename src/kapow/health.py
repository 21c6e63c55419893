"""``kapow check``: is the config usable right now? The broker answers, each destination database accepts us."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import make_conninfo

from kapow.config import Config
from kapow.errors import one_line
from kapow.kafka.clients import admin_config
from kapow.kafka.connectivity import BrokerUnreachable, wait_for_broker

# How long `kapow check` gives the broker to answer; the reason it did not comes from librdkafka's own error.
BROKER_WAIT_S = 10.0


def check_config(config: Config) -> Iterator[tuple[str, bool]]:
    yield "config parsed", True
    k = config.kafka
    try:
        wait_for_broker(k.bootstrap_servers, k.settings, give_up_s=BROKER_WAIT_S)
        meta = AdminClient(admin_config(k.bootstrap_servers, k.settings)).list_topics(timeout=10)
        yield f"Kafka at {k.bootstrap_servers} answers ({len(meta.brokers)} broker(s))", True
        for topic in k.topics:
            if topic in meta.topics:
                parts = len(meta.topics[topic].partitions)
                yield f"topic {topic} exists ({parts} partitions)", True
            else:
                yield f"topic {topic} does not exist yet (it is created on first publish if the broker allows)", True
    except BrokerUnreachable as exc:
        yield str(exc), False
    except KafkaException as exc:
        yield f"Kafka at {k.bootstrap_servers}: {one_line(str(exc))}", False
    for dest in config.destinations:
        for database in dest.databases:
            where = f"{dest.vanity}/{database} ({dest.host}:{dest.port} as {dest.user})"
            try:
                pw = dest.password()
                conninfo = make_conninfo(dest.conninfo(database), **({"password": pw} if pw else {}))
                with psycopg.connect(conninfo) as conn:
                    version = conn.execute("SHOW server_version").fetchone()
                yield f"{where}: PostgreSQL {version[0] if version else '?'}", True
            except psycopg.Error as exc:
                yield f"{where}: {one_line(exc)}", False
