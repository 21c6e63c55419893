"""Where the benchmark finds the broker, the database and the broker's process, and how it fails when they are not
there: one line naming the service and the command that starts it, never a traceback.

Every connection the harness opens carries ``application_name = 'kapow-bench'``, so that the CPU meter
(:mod:`kapow_bench.cpu`) can count the PostgreSQL backends that serve the writer (or the peer) and leave out the
ones that only serve the harness's own polls, pre-loads and COPYs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kapow.errors import KapowError

BOOTSTRAP = os.environ.get("KAPOW_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('KAPOW_KAFKA_PORT') or 9092}"
ADMIN_DSN = os.environ.get("KAPOW_ADMIN_DSN") or (f"host={os.environ.get('KAPOW_PG_HOST') or '127.0.0.1'} "
                                                  f"port={os.environ.get('KAPOW_PG_PORT') or 5432} "
                                                  "user=postgres dbname=postgres")
HARNESS_APP = "kapow-bench"


def dsn(database: str, *, application: str = HARNESS_APP) -> str:
    """A connection string for one scratch database, tagged as the harness's own unless told otherwise."""
    return make_conninfo(ADMIN_DSN, dbname=database, application_name=application)


def connect(database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn(database), autocommit=True)


def admin_connection() -> psycopg.Connection[Any]:
    """The admin database, or one line saying PostgreSQL is not there."""
    try:
        return psycopg.connect(make_conninfo(ADMIN_DSN, application_name=HARNESS_APP), autocommit=True,
                               connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        raise KapowError(f"PostgreSQL is not reachable ({reason}); run: make services") from None


def check_services() -> str:
    """Fail fast, in one line, when the broker or the database is down; the server's version when both are up."""
    with admin_connection() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=10)
    except KafkaException:
        raise KapowError(f"Kafka is not reachable at {BOOTSTRAP}; run: make services") from None
    return str(row[0]) if row else "?"


def pg_location() -> tuple[str, int, str]:
    """(host, port, user) of the server, for the writer's ``[[destinations]]`` entry."""
    info = conninfo_to_dict(ADMIN_DSN)
    return (str(info.get("host") or "127.0.0.1"), int(str(info.get("port") or 5432)),
            str(info.get("user") or "postgres"))


def services_dir() -> Path:
    """``$KAPOW_SERVICES_DIR``, else the checkout's ``.services`` (where ``make services`` keeps its state)."""
    env = os.environ.get("KAPOW_SERVICES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".services"


def broker_pid() -> int | None:
    """The local broker's pid from its pid file, or None (the broker's CPU is then reported as unknown)."""
    try:
        pid = int((services_dir() / "kafka" / "kafka.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}/stat").exists() else None
