"""Chaos fixtures: each test gets scenarios whose topics, databases and writers are all removed afterwards.

The short variants run in `make test`; `make chaos` sets ``KAPOW_CHAOS=long`` for the long ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from tests.chaos import harness


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: fault-injection scenarios with exact accounting (tests/chaos)")


@pytest.fixture(scope="session", autouse=True)
def chaos_services() -> None:
    try:
        AdminClient({"bootstrap.servers": harness.BOOTSTRAP}).list_topics(timeout=15)
    except Exception as exc:
        pytest.fail(f"Kafka is not reachable at {harness.BOOTSTRAP} ({exc}); run: make services", pytrace=False)
    try:
        psycopg.connect(f"host={harness.PG_HOST} port={harness.PG_PORT} user=postgres dbname=postgres",
                        connect_timeout=5).close()
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is not reachable ({exc}); run: make services", pytrace=False)


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Callable[..., harness.Scenario]]:
    made: list[harness.Scenario] = []

    def make(name: str, **kwargs: Any) -> harness.Scenario:
        s = harness.Scenario(name=name, tmp=tmp_path, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.teardown()
