"""Integration fixtures. The broker and database are real and must be up (`make services`): a missing service
fails the run, it never skips it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from tests.integration import kit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", autouse=True)
def services() -> None:
    try:
        AdminClient({"bootstrap.servers": kit.BOOTSTRAP}).list_topics(timeout=15)
    except Exception as exc:
        pytest.fail(f"Kafka is not reachable at {kit.BOOTSTRAP} ({exc}); run: make services", pytrace=False)
    try:
        psycopg.connect(kit.ADMIN_DSN, connect_timeout=5).close()
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is not reachable ({exc}); run: make services", pytrace=False)


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[Callable[..., kit.Env]]:
    """Create a test world: topic (6 partitions), error topics, group and N fresh databases; all removed after."""
    topics: list[str] = []
    databases: list[str] = []

    def make(n_databases: int = 1, partitions: int = 6) -> kit.Env:
        base = kit.uid("kt")
        env = kit.Env(topic=f"{base}.in", group=f"{base}.group", user_errors=f"{base}.user",
                      system_errors=f"{base}.system", databases=[kit.uid("kdb") for _ in range(n_databases)],
                      tmp=tmp_path)
        kit.create_topic(env.topic, partitions)
        topics.extend([env.topic, env.user_errors, env.system_errors])
        for db in env.databases:
            kit.create_database(db)
            databases.append(db)
        return env

    yield make
    for db in databases:
        kit.drop_database(db)
    try:
        kit.remove_topics(topics)
    except Exception:
        pass


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[Callable[[kit.Env], kit.WriterProcess]]:
    """Start writer processes for an env; any still running at the end are stopped."""
    started: list[kit.WriterProcess] = []

    def start(env: kit.Env) -> kit.WriterProcess:
        config = env.write_config()
        w = kit.WriterProcess(config, tmp_path / f"writer-{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()
