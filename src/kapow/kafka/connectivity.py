"""Wait for the broker before starting work: one line per interval naming the address and the reason, a bound.

Without it, a writer started while Kafka is down sat in librdkafka's reconnect loop (hundreds of raw lines, no
line of its own), gave up after 31 s with a message that did not name the address, and heard SIGTERM only 18 s
later (issue 18). :func:`wait_for_broker` probes with a cluster-metadata request of at most ``probe_s`` (1 s), so a stop
request is seen within about a second; it reports through a callback, so the CLI can log it (JSON under
``format = "json"``) or print it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from kapow.kafka.clientlog import BrokerErrors, LibrdkafkaLog, RateLimiter, reason_of

GIVE_UP_S = 60.0
REPORT_EVERY_S = 10.0
PROBE_S = 1.0


class BrokerUnreachable(Exception):
    """The broker did not answer within the bound; the message names the address and the last reason."""


@dataclass(frozen=True)
class Waiting:
    """One progress report: who, why, how long so far, and the bound."""

    bootstrap: str
    reason: str
    waited_s: float
    give_up_s: float

    def line(self) -> str:
        return (f"waiting for Kafka at {self.bootstrap}: {self.reason} "
                f"({self.waited_s:.0f} s of {self.give_up_s:.0f} s)")


def wait_for_broker(
    bootstrap: str,
    settings: dict[str, str | int | float | bool] | None = None,
    *,
    give_up_s: float = GIVE_UP_S,
    report_every_s: float = REPORT_EVERY_S,
    probe_s: float = PROBE_S,
    stop: threading.Event | None = None,
    report: Callable[[Waiting], None] | None = None,
) -> bool:
    """Return True once the broker answers a metadata request, False if ``stop`` was set first.

    Raise :class:`BrokerUnreachable` after ``give_up_s``. ``report`` is called at most once per
    ``report_every_s`` while waiting (the first time after the first failed probe).
    """
    from kapow.kafka.clients import admin_config, refusal

    errors = BrokerErrors(bootstrap, quiet=True)
    refused: list[str] = []

    def on_error(err: KafkaError) -> None:  # a refusal (wrong password, certificate) is final: no use waiting
        errors(err)
        why = refusal(err)
        if why is not None and not refused:
            refused.append(why)

    conf = admin_config(bootstrap, settings)
    conf.update({"logger": LibrdkafkaLog(RateLimiter()), "error_cb": on_error})
    admin = AdminClient(conf)
    stop = stop or threading.Event()
    started = time.monotonic()
    next_report = started
    reason = "no answer"
    while True:
        if stop.is_set():
            return False
        probe_started = time.monotonic()
        try:
            _probe(admin, probe_s)
            return True
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb, which knows the reason ("Connection refused", a DNS failure, ...)
            if refused:
                raise BrokerUnreachable(f"Kafka at {bootstrap}: {refused[0]}") from None
            reason = errors.last_reason or reason_of(str(exc.args[0].str() if exc.args else exc))
        now = time.monotonic()
        waited = now - started
        if waited >= give_up_s:
            raise BrokerUnreachable(f"Kafka at {bootstrap} cannot be reached: {reason} (gave up after "
                                    f"{give_up_s:.0f} s)")
        if report is not None and now >= next_report:
            report(Waiting(bootstrap, reason, waited, give_up_s))
            next_report = now + report_every_s
        # a refused connection fails at once, a silent host takes the whole probe: one probe per probe_s either way
        stop.wait(min(max(0.0, probe_s - (now - probe_started)), give_up_s - waited))


def _probe(admin: AdminClient, probe_s: float) -> None:
    """Return once the broker answers; raise librdkafka's KafkaException if it did not within ``probe_s``.

    ``describe_cluster`` (librdkafka sends a metadata request for no topic), not ``list_topics``: on a fresh
    client that took 54-69 ms against a local broker (3-4 ms this way), and it lists every topic of the cluster.
    An error the broker itself returns (code > 0) is an answer too; local errors (timed out, transport) are not.
    """
    try:
        admin.describe_cluster(request_timeout=probe_s).result()
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() > 0:
            return
        raise
