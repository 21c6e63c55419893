"""``kapow run``: the writer, until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from kapow.errors import KapowError


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run the writer (consume, land, commit) until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, help="TOML config file")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from kapow.config import load_config
    from kapow.logs import setup_logging

    config = load_config(args.config)
    setup_logging(config.log.level, config.log.format)
    from confluent_kafka import KafkaException

    from kapow.pipeline.runner import Writer

    writer = Writer(config)
    http = None
    if config.http.enabled:  # metrics, health, DLQ API and console, on a thread beside the loop
        from kapow.http.server import HttpServer, admin_token

        http = HttpServer(config, writer, token=admin_token())
        http.start()
    writer.install_signals()
    try:
        drained = writer.run()
    except KafkaException as exc:
        raise KapowError(f"Kafka: {exc.args[0] if exc.args else exc}") from None
    finally:
        if http is not None:
            http.stop()
    logging.shutdown()
    if not drained:  # worker threads may still wait on a database: do not let them hold the exit
        os._exit(0)
    return 0
