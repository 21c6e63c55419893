"""`kapow bench` as a smoke run: tiny N, exact counts and a well-formed JSON result. No speed is asserted: the
benchmark is measured by `make bench` on a quiet machine, not timed in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.integration import kit

pytestmark = pytest.mark.integration


def scratch_databases() -> set[str]:
    with psycopg.connect(kit.ADMIN_DSN, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname ~ '^kb[a-z]?_[0-9a-f]{8}$'").fetchall()
    return {name for (name,) in rows}


def test_bench_smoke_counts_are_exact_and_json_is_well_formed(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    before = scratch_databases()
    proc = subprocess.run(
        [sys.executable, "-m", "kapow", "bench", "-n", "2000", "--runs", "1", "--preset", "250b", "--preset", "12b",
         "--baselines", "--seed-packets", "300", "--latency", "--rate", "500", "--duration", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {"machine", "argv", "finished_at", "summary", "runs"} <= set(result)
    assert result["machine"]["nproc"] >= 1 and result["machine"]["postgresql"]
    kinds = {(r["kind"], r.get("mode"), r.get("preset")) for r in result["runs"]}
    assert kinds >= {("kapow", "live", "250b"), ("kapow", "prefilled", "250b"), ("kapow", "live", "12b"),
                     ("kapow", "prefilled", "12b"), ("seed-naive", "prefilled", "250b"),
                     ("copy-ceiling-1conn", "no-kafka", "250b"), ("latency", "steady", "250b")}
    for run in result["runs"]:
        assert run["exact"] is True, run
        assert run["rows"] == run["packets"], run
        assert run["load_before"] >= 0
        if run["kind"] == "latency":
            assert 0 <= run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] <= run["max_ms"]
        else:
            assert run["seconds"] > 0 and run["packets_per_s"] > 0
    for run in result["runs"]:
        if run["kind"] == "kapow":
            assert run["cpu_seconds"] > 0 and run["peak_rss_mib"] > 0
            assert 200 <= run["value_bytes"] <= 300 if run["preset"] == "250b" else run["value_bytes"] < 150
    assert all(row["runs"] == 1 and row["exact"] for row in result["summary"])
    assert "packets/s" in proc.stdout
    assert scratch_databases() <= before  # every scratch database it made is gone


def test_bench_fails_in_one_line_when_postgres_is_down() -> None:
    proc = subprocess.run([sys.executable, "-m", "kapow", "bench", "-n", "10", "--runs", "1"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "KAPOW_ADMIN_DSN": "host=127.0.0.1 port=1 user=postgres"})
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "PostgreSQL is not reachable" in proc.stderr
