"""The speed guard of ``make test`` (tests/perf/test_ratios.py) and the checks of the benchmark's own generators.

The guard needs the real broker and database and fails, never skips, when they are missing (as tests/integration).
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "perf: speed ratios measured against the real broker and database")


@pytest.fixture(scope="session")
def services() -> None:
    from kapow.errors import KapowError
    from kapow_bench.env import check_services

    try:
        check_services()
    except KapowError as exc:
        pytest.fail(str(exc), pytrace=False)
