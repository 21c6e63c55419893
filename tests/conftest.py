"""Suite-wide hooks.

Under `make mutation` a mutant can make a test wait forever without using CPU (a read that never reaches its end,
a wait for a record that never comes), and mutmut's limit is on CPU time, so it would never fire. There, each test
gets a wall-clock bound: past it the process prints every thread's stack and exits 1, which mutmut counts as the
mutant caught, as a CI timeout would. Outside mutation runs nothing changes.
"""

from __future__ import annotations

import faulthandler
import os

import pytest

MUTATION_TEST_BOUND_S = 120  # the slowest test mutmut runs takes about 10 s


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if os.environ.get("MUTANT_UNDER_TEST"):
        faulthandler.dump_traceback_later(MUTATION_TEST_BOUND_S, exit=True)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if os.environ.get("MUTANT_UNDER_TEST"):
        faulthandler.cancel_dump_traceback_later()
