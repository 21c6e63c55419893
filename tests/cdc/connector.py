"""Debezium's PostgreSQL source connector in a Kafka Connect standalone worker, driven through
``scripts/connect.sh`` (the same script ``make cdc-demo`` and the benchmark use), so tests exercise it too."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "connect.sh"


class Connector:
    """One connector capturing one database into topics ``<prefix>.<schema>.<table>``; state under ``state``."""

    def __init__(self, state: Path, *, database: str, prefix: str, tables: str | None = None, schemas: bool = True,
                 settings: dict[str, str] | None = None) -> None:
        self.state = state
        self.database = database
        self.prefix = prefix
        self.tables = tables
        self.schemas = schemas
        self.settings = settings or {}
        self.started_s: float | None = None  # wall time of the last start, script call to RUNNING

    @property
    def log_path(self) -> Path:
        return self.state / "connect.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _run(self, *args: str, timeout: float = 300.0) -> str:
        proc = subprocess.run(["bash", str(SCRIPT), *args, "--state", str(self.state)], capture_output=True,
                              text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"connect.sh {args[0]} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                                 f"--- connect.log tail ---\n{self.log()[-4000:]}")
        return proc.stdout

    def start(self, timeout: float = 120.0) -> str:
        args = ["start", "--database", self.database, "--prefix", self.prefix, "--timeout", str(int(timeout))]
        if self.tables:
            args += ["--tables", self.tables]
        if not self.schemas:
            args.append("--no-schemas")
        for key, value in self.settings.items():
            args += ["--set", f"{key}={value}"]
        t0 = time.monotonic()
        out = self._run(*args, timeout=timeout + 300)  # + the one-time Maven resolution
        self.started_s = time.monotonic() - t0
        return out

    def status(self) -> str:
        return self._run("status")

    def stop(self) -> str:
        return self._run("stop")

    def drop(self) -> str:
        """Stop, drop the replication slot and the publication (the database can then be dropped)."""
        return self._run("drop")

    def wait_snapshot(self, timeout: float) -> float:
        """Wait for Debezium's "Snapshot completed" line; return the snapshot's duration from its own log lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if "Snapshot completed" in text:
                return _snapshot_seconds(text)
            if "Snapshot ended with SnapshotResult [status=SKIPPED" in text:
                return 0.0
            if " ERROR " in text and "Producer failure" in text:
                raise AssertionError(f"connector failed during the snapshot:\n{text[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no completed snapshot after {timeout:.0f} s:\n{self.log()[-4000:]}")


_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _log_time(line: str) -> float:
    m = _STAMP.match(line)
    if m is None:
        return 0.0
    stamp = time.strptime(m[1][:19], "%Y-%m-%d %H:%M:%S")
    return time.mktime(stamp) + int(m[1][20:]) / 1000


def _snapshot_seconds(text: str) -> float:
    start = end = 0.0
    for line in text.splitlines():
        if "Snapshot step 1 - Preparing" in line:
            start = _log_time(line)
        elif "Snapshot completed" in line:
            end = _log_time(line)
    return max(end - start, 0.0)
