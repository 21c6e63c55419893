"""``kapow run``: the writer, until SIGTERM/SIGINT.

Before the writer starts, it waits for the broker (:func:`kapow.kafka.connectivity.wait_for_broker`): one log line
about every 10 s naming the address and the reason, SIGTERM (exit 0) or SIGINT (exit 130) honoured within about a
second, and a bound of :data:`BROKER_WAIT_S` after which it exits 1 with one line naming the address. The lines go
through logging, so ``[log] format = "json"`` keeps stderr pure JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from kapow.errors import KapowError

log = logging.getLogger("kapow.run")

# How long `kapow run` waits for an unreachable broker before it gives up: 60 s, or KAPOW_BROKER_WAIT_S (the tests
# use a few seconds). A constant for now; a [kafka] key would be the lead's call (config.py).
BROKER_WAIT_S = 60.0
EXIT_SIGINT = 130


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run the writer (consume, land, commit) until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, help="TOML config file")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from kapow.config import load_config
    from kapow.logs import setup_logging

    config = load_config(args.config)
    setup_logging(config.log.level, config.log.format)
    early = StartSignals()  # from here until the writer's own handlers take over, no signal is lost
    waited = _wait_for_broker(config.kafka.bootstrap_servers, config.kafka.settings, early)
    if waited is not None:
        return waited
    from confluent_kafka import KafkaException

    from kapow.pipeline.runner import Writer

    writer = Writer(config)
    http = None
    if config.http.enabled:  # metrics, health, DLQ API and console, on a thread beside the loop
        from kapow.http.server import HttpServer, admin_token

        http = HttpServer(config, writer, token=admin_token())
        http.start()
    from kapow.health import log_destination_problems

    # lanes open their database on first use: say now, not at the first parked packet, what is wrong with one
    # (after the HTTP bind, so that a refused listen address stays the one line of a failed start)
    threading.Thread(target=log_destination_problems, args=(config, log), name="kapow-preflight",
                     daemon=True).start()
    writer.install_signals()
    if early.received:  # SIGTERM while starting (a pod stopped at once): start, then stop as at any other time
        log.info("signal %s during start: stopping", signal.Signals(early.received[0]).name)
        writer.stop()
    try:
        drained = writer.run()
    except KafkaException as exc:
        raise KapowError(f"Kafka at {config.kafka.bootstrap_servers}: {exc.args[0] if exc.args else exc}") from None
    finally:
        if http is not None:
            http.stop()
    logging.shutdown()
    if not drained:  # worker threads may still wait on a database: do not let them hold the exit
        os._exit(0)
    return 0


class StartSignals:
    """SIGTERM and SIGINT received while the writer starts, kept until its own handlers take over.

    Installed before the wait for the broker and left in place until :meth:`Writer.install_signals` replaces
    it: a signal that arrives after the broker answered, while the writer is being built, is remembered, and
    the writer stops at once instead of running on until it is killed.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        self.stop.set()


def _wait_for_broker(bootstrap: str, settings: dict[str, str | int | float | bool],
                     early: StartSignals) -> int | None:
    """None once the broker answers; otherwise the exit code (0 SIGTERM, 130 SIGINT, 1 gave up)."""
    from kapow.kafka.connectivity import BrokerUnreachable, wait_for_broker

    try:
        ready = wait_for_broker(bootstrap, settings, give_up_s=_broker_wait_s(), stop=early.stop,
                                report=lambda w: log.warning("%s", w.line(), extra={"fields": {
                                    "bootstrap": w.bootstrap, "reason": w.reason, "waited_s": round(w.waited_s)}}))
    except BrokerUnreachable as exc:
        log.error("%s", exc, extra={"fields": {"bootstrap": bootstrap}})
        return 1
    if ready and not early.received:
        return None
    received = early.received
    name = signal.Signals(received[0]).name if received else "stop"
    log.info("%s while waiting for Kafka at %s: not started", name, bootstrap)
    return EXIT_SIGINT if received and received[0] == signal.SIGINT else 0


def _broker_wait_s() -> float:
    raw = os.environ.get("KAPOW_BROKER_WAIT_S", "")
    try:
        return float(raw) if raw else BROKER_WAIT_S
    except ValueError:
        raise KapowError(f"KAPOW_BROKER_WAIT_S: expected a number of seconds, got {raw!r}") from None
