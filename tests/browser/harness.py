"""The writer with its HTTP side on, for the operations tests (API, metrics, console): a real ``kapow run``
process on a free loopback port, a config derived from :class:`tests.integration.kit.Env`, and small HTTP helpers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import kit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def dead_port() -> int:
    """A loopback port where nothing listens (a destination that refuses every connection)."""
    return free_port()


def http_config(env: kit.Env, port: int, *, log_level: str = "INFO", extra: str = "") -> str:
    """The env's config with ``[http]`` listening on ``127.0.0.1:port``."""
    text = env.config_text()
    off = "[http]\nenabled = false\n"
    assert off in text, "kit.Env no longer writes an [http] section: update this helper"
    text = text.replace(off, f'[http]\nlisten = "127.0.0.1:{port}"\n')
    text = text.replace("[log]\n", f'[log]\nlevel = "{log_level}"\n')
    return text + extra


class HttpWriter(kit.WriterProcess):
    """``kapow run`` with HTTP on; ``url`` is its base URL. Extra environment variables go to the child only."""

    def __init__(self, config_text: str, tmp: Path, port: int, *, name: str = "writer",
                 environ: dict[str, str] | None = None) -> None:
        config = tmp / f"{name}-{port}.toml"
        config.write_text(config_text)
        self.config = config
        self.log_path = tmp / f"{name}-{port}-{int(time.time() * 1000)}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(config)],
                                     stdout=self._log, stderr=self._log, env={**os.environ, **(environ or {})})
        self.url = f"http://127.0.0.1:{port}"
        self.port = port

    def wait_ready(self, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
        def ready() -> bool:
            assert self.alive(), f"writer exited early:\n{self.log()[-3000:]}"
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2, headers=headers).status_code == 200
            except httpx.HTTPError:
                return False

        kit.wait_for(ready, timeout, "the writer to be ready (/readyz 200)")


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape ``/metrics``: (sample name, sorted labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for (sample, lbls), v in scraped.items():
        if sample == name and all((k, want) in lbls for k, want in labels.items()):
            total += v
    return total


def get_json(url: str, path: str, token: str | None = None, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(f"{url}{path}", params=params, headers=headers, timeout=30)
    assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:300]}"
    return r.json()


Starter = Callable[..., HttpWriter]


@pytest.fixture
def http_writers(tmp_path: Path) -> Iterator[Starter]:
    """Start HTTP-enabled writers: ``start(config_text, port, environ=None)``; all are stopped at the end."""
    started: list[HttpWriter] = []

    def start(config_text: str, port: int, environ: dict[str, str] | None = None) -> HttpWriter:
        w = HttpWriter(config_text, tmp_path, port, name=f"writer{len(started)}", environ=environ)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()
