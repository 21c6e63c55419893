"""Browser fixtures: Debian's Chromium driven by Playwright (no browser download), plus the integration fixtures
(real Kafka and PostgreSQL, fresh topics and databases). A missing browser or service fails the run."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import harness
from tests.integration import conftest as integration

pytestmark = pytest.mark.integration

services = integration.services  # autouse: Kafka and PostgreSQL must answer
make_env = integration.make_env
http_writers = harness.http_writers

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page() -> Iterator[Any]:
    """A fresh Chromium profile and page (1440x1000); the browser is closed afterwards."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make test does it)", pytrace=False)
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="kapow-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
        try:
            tab = context.new_page()
            tab.set_default_timeout(30_000)
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.js_errors = errors  # type: ignore[attr-defined]
            yield tab
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)
