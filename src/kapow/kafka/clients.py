"""Kafka clients, configured in one place: the writer's consumer and producer, and an admin client.

The consumer never auto-commits and never auto-stores offsets: the commit step alone decides what is done.
The producer is idempotent with ``acks=all``, since an error record is the only copy of a failed packet.
Every client routes librdkafka's own log lines and errors through KaPoW's logging, rate-limited, with one line of
its own naming the bootstrap address when the broker cannot be reached (:mod:`kapow.kafka.clientlog`); a
``logger`` or ``error_cb`` the caller passes wins.

Security (TLS, SASL) reaches every client the same way: the typed keys of ``[kafka]`` (``security_protocol``,
``sasl_*``, ``ssl_*``) are translated into librdkafka properties
(:func:`kapow.credentials.security_properties`) and merged into ``kafka.settings`` when the config is parsed, and
every client here is built from those settings. The password is not among them: the settings name where it is
(``kapow.sasl.password.env`` or ``.file``, KaPoW's own keys), and :func:`kapow.credentials.with_secrets` reads it
when a client is made. So no settings dict ever holds it (one written back to a file, printed or logged shows
none), and a rotated password file is read by the next client. A broker that
refuses us (a wrong password, a certificate that does not verify) is told apart from one that does not answer
(:func:`refusal`): waiting cannot fix the first, so it is reported at once, in one line that names the key to fix.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from kapow.credentials import with_secrets
from kapow.errors import KapowError
from kapow.kafka.clientlog import LibrdkafkaLog, RateLimiter, client_logging, reason_of

log = logging.getLogger(__name__)

Settings = Mapping[str, str | int | float | bool]

# librdkafka (2.10+) drops the bootstrap connection once the metadata names the broker, failing what was in flight
# on it (a consumer's FindCoordinator), and waits reconnect.backoff.ms / 2 (50 ms by default) before it picks a
# broker again: the group was joined 55-60 ms after subscribe, 18 ms with 20 ms. Reconnects after a failure still
# back off exponentially up to reconnect.backoff.max.ms (10 s).
FAST_RECONNECT = {"reconnect.backoff.ms": 20}

# How long the broker may hold a fetch that finds no record (librdkafka's and Kafka's own default). With
# fetch.min.bytes 1 the broker answers as soon as one record is there, so this is not the latency: it is how often
# a caught-up consumer asks again. At 20 ms every writer's consumers asked 50 times a second; at 500, CPU a packet
# was lower in 10 of 12 interleaved 300,000-packet runs (250 B medians 16.5 -> 15.1 us, 12 B no measurable change;
# docs/BENCHMARKS.md, session 9), and record -> row latency and a backlog held in one partition of six measured the
# same at 20, 100 and 500 ms.
FETCH_WAIT_MS = 500

# OpenSSL's error-queue codes and librdkafka's generic advice, around the reason that matters
_SSL_NOISE = re.compile(r"error:[0-9A-F]+:SSL routines::|: broker certificate could not be verified, verify that "
                        r"ssl\.ca\.location is correctly configured or root CA certificates are installed "
                        r"\(install ca-certificates package\)")


class BrokerRefused(KapowError):
    """The broker answered and refused us (authentication, TLS): waiting will not help; the message says why."""


def refusal(err: KafkaError) -> str | None:
    """A one-line reason when ``err`` says the broker refused us rather than could not be reached, else None.

    SASL: a wrong user name or password (librdkafka's ``_AUTHENTICATION``). TLS: the broker's certificate is not
    signed by ``ssl_ca_location`` or not issued for the address we dial, or the broker refused our certificate
    (``_SSL`` with a verification reason). A TLS error without one (a handshake cut short, a plaintext listener) may
    be passing, and is left to the caller's wait.
    """
    text = _SSL_NOISE.sub("", reason_of(err.str()))
    code = err.code()
    if code == KafkaError._AUTHENTICATION:
        return f"SASL authentication failed: {text} (check kafka.sasl_username and its password)"
    if code == KafkaError._SSL:
        lowered = text.lower()
        if "certificate verify failed" in lowered or "could not be verified" in lowered:
            return (f"TLS: the broker's certificate does not verify ({text}): check kafka.ssl_ca_location, and that "
                    "the certificate names the host in bootstrap_servers")
        if "alert" in lowered and ("unknown ca" in lowered or "certificate" in lowered):
            return f"TLS: the broker refused our certificate ({text}): check kafka.ssl_certificate_location"
    return None


class _Refusals:
    """An ``error_cb`` that remembers the first refusal (see :func:`refusal`) and the latest reason."""

    def __init__(self) -> None:
        self.refused: str | None = None
        self.last_reason: str | None = None

    def __call__(self, err: KafkaError) -> None:
        why = refusal(err)
        if why is not None and self.refused is None:
            self.refused = why
        if err.code() != KafkaError._ALL_BROKERS_DOWN:
            self.last_reason = reason_of(err.str())


def check_access(bootstrap: str, settings: Settings | None = None, *, timeout: float = 10.0,
                 probe_s: float = 0.5) -> int:
    """Ask the broker for metadata; return how many brokers it has. Raise :class:`BrokerRefused` as soon as it
    refuses us (one line: a wrong SASL password fails here in well under a second, not after ``timeout``), and
    :class:`KapowError` naming the address and the last reason when it does not answer within ``timeout``."""
    errors = _Refusals()
    conf = admin_config(bootstrap, settings)
    quiet = logging.Logger("kapow.kafka.probe")  # not registered: the reason is ours to tell, in one line
    quiet.addHandler(logging.NullHandler())
    conf.update({"error_cb": errors, "logger": LibrdkafkaLog(RateLimiter(), quiet)})
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return len(admin.list_topics(timeout=probe_s).brokers)
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            if errors.refused is not None:
                raise BrokerRefused(f"Kafka at {bootstrap}: {errors.refused}") from None
            if time.monotonic() >= deadline:
                reason = errors.last_reason or reason_of(exc.args[0].str() if exc.args else str(exc))
                raise KapowError(f"Kafka at {bootstrap} cannot be reached: {reason} (gave up after "
                                 f"{timeout:.0f} s)") from None


def consumer_config(bootstrap: str, group_id: str, settings: Settings | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "partition.assignment.strategy": "range,roundrobin",
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": FETCH_WAIT_MS,
        "queued.max.messages.kbytes": 16384,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 300000,
        # partitions an operator adds (to scale out) are found at the next metadata refresh: librdkafka's 5 min
        # default left records in them waiting 293 s; one small metadata request every 10 s costs nothing
        "topic.metadata.refresh.interval.ms": 10000,
        "client.id": "kapow",
        **FAST_RECONNECT,
    }
    conf.update(settings or {})
    return _with_logging(with_secrets(conf), bootstrap)


def producer_config(bootstrap: str, settings: Settings | None = None, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 30000,
        "client.id": "kapow",
    }
    conf.update(settings or {})
    conf.update(extra)
    return _with_logging(with_secrets(conf), bootstrap)


def _with_logging(conf: dict[str, Any], bootstrap: str) -> dict[str, Any]:
    for key, value in client_logging(bootstrap).items():
        conf.setdefault(key, value)  # a caller's own logger or error_cb (in settings or extra) wins
    return conf


def make_consumer(bootstrap: str, group_id: str, settings: Settings | None = None) -> Consumer:
    return Consumer(consumer_config(bootstrap, group_id, settings))


def make_producer(bootstrap: str, settings: Settings | None = None, **extra: Any) -> Producer:
    return Producer(producer_config(bootstrap, settings, **extra))


def admin_config(bootstrap: str, settings: Settings | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap}
    # Admin takes only the client-level properties (security, sasl, ...), not consumer/producer tuning.
    for key, value in (settings or {}).items():
        if key.startswith(("security.", "sasl.", "ssl.", "client.", "kapow.sasl.")):
            conf[key] = value
    return _with_logging(with_secrets(conf), bootstrap)


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    settings: Settings | None = None,
    # -1: the broker's default.replication.factor. A fixed 1 put the error topics (the only copy of a failed
    # packet) on one broker: losing it stalled every commit and could lose parked packets (chaos: broker kill).
    replication_factor: int = -1,
    timeout: float = 30.0,
) -> None:
    """Create the topics that do not exist yet (name -> partitions); existing ones are left as they are."""
    admin = AdminClient(admin_config(bootstrap, settings))
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(t, num_partitions=p, replication_factor=replication_factor)
           for t, p in topics.items() if t not in existing]
    if not new:
        return
    for topic, future in admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def delete_topics(bootstrap: str, topics: list[str], timeout: float = 30.0, *,
                  settings: Settings | None = None) -> None:
    admin = AdminClient(admin_config(bootstrap, settings))
    for future in admin.delete_topics(topics, operation_timeout=timeout).values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if "UNKNOWN_TOPIC" not in str(exc):
                raise
