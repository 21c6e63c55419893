"""`kapow bench` as smoke runs: tiny N, every workload kind, exact final states and a well-formed JSON result.
No speed is asserted here (tests/perf guards ratios); the benchmark is measured by `make bench` on a quiet machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration import kit

pytestmark = pytest.mark.integration


def scratch_databases() -> set[str]:
    with psycopg.connect(kit.ADMIN_DSN, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname ~ '^kb[a-z]?_[0-9a-f]{8}'").fetchall()
    return {name for (name,) in rows}


def bench(tmp_path: Path, *args: str, entry: tuple[str, ...] = ("-m", "kapow", "bench")) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    before = scratch_databases()
    proc = subprocess.run([sys.executable, *entry, "--runs", "1", *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "packets/s" in proc.stdout
    assert scratch_databases() <= before  # every scratch database it made is gone
    result: dict[str, Any] = json.loads(out.read_text())
    for run in result["runs"]:
        assert run["exact"] is True, run
        assert run["load_before"] >= 0
    assert all(row["runs"] == 1 and row["exact"] for row in result["summary"])
    return result


def test_inserts_both_sizes_with_baselines_and_latency(tmp_path: Path) -> None:
    result = bench(tmp_path, "-n", "2000", "--size", "250", "--size", "12", "--live", "--baselines",
                   "--seed-packets", "300", "--latency", "--rate", "500", "--duration", "1")
    assert {"machine", "argv", "finished_at", "summary", "runs"} <= set(result)
    assert result["machine"]["nproc"] >= 1 and result["machine"]["postgresql"]
    kinds = {(r["kind"], r["clock"], r["workload"]) for r in result["runs"]}
    assert kinds >= {("kapow", "live", "insert 250B"), ("kapow", "prefilled", "insert 250B"),
                     ("kapow", "live", "insert 12B"), ("kapow", "prefilled", "insert 12B"),
                     ("seed-naive", "prefilled", "insert 250B"), ("latency", "steady", "insert 250B")}
    for run in result["runs"]:
        if run["kind"] == "latency":
            assert 0 <= run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] <= run["max_ms"]
            continue
        assert run["rows"] == run["packets"]
        assert run["seconds"] > 0 and 0 < run["packets_per_s"] <= run["steady_packets_per_s"] * 1.01
        assert run["cpu_writer_s"] > 0 and run["cpu_postgres_s"] >= 0 and run["peak_rss_mib"] > 0, run
        if run["kind"] == "kapow":
            assert run["ceiling_packets_per_s"] > 0 and run["steady_over_ceiling"] > 0
            assert 200 <= run["value_bytes"] <= 300 if run["size"] == 250 else run["value_bytes"] < 150


@pytest.mark.parametrize(("args", "workload"), [
    (("--mode", "upsert", "--version"), "upsert 250B +version"),
    (("--mode", "delete"), "delete keys"),
    (("--route", "json"), "route json 250B"),
    (("--route", "debezium"), "route debezium 250B"),
])
def test_each_mode_and_route_lands_its_exact_final_state(tmp_path: Path, args: tuple[str, ...],
                                                          workload: str) -> None:
    result = bench(tmp_path, "-n", "3000", *args, entry=("-m", "kapow_bench"))
    (run,) = result["runs"]
    assert run["workload"] == workload and run["cpu_total_us_per_packet"] > 0
    assert run["first_to_last_s"] > 0 and run["seconds"] >= run["first_to_last_s"]
    if args[-1] != "json":  # upserts, deletes and change events leave fewer rows than packets
        assert run["rows"] < run["packets"]


def test_spread_over_tables_and_databases_is_compared_with_one_table(tmp_path: Path) -> None:
    result = bench(tmp_path, "-n", "3000", "--tables", "20", "--databases", "3", "--skew", "1",
                   "--ceiling-connections", "0")
    assert [r["workload"] for r in result["runs"]] == ["insert 250B", "insert 250B 20t/3db zipf1"]
    spread = result["summary"][1]
    assert spread["rows"] == 3000 and spread["vs_one_table"] > 0 and "ceiling_packets_per_s" not in spread


def test_tables_of_their_own_names_land_exactly(tmp_path: Path) -> None:
    result = bench(tmp_path, "-n", "2000", "--tables", "8", "--own-names", "--no-reference",
                   "--ceiling-connections", "0")
    (run,) = result["runs"]
    assert run["workload"] == "insert 250B 8t/1db own names" and run["own_names"] is True
    assert run["rows"] == 2000 and run["exact"] and run["sample_matches"]


def test_bench_fails_in_one_line_when_postgres_is_down() -> None:
    proc = subprocess.run([sys.executable, "-m", "kapow", "bench", "-n", "10", "--runs", "1"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "KAPOW_ADMIN_DSN": "host=127.0.0.1 port=1 user=postgres"})
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "PostgreSQL is not reachable" in proc.stderr


@pytest.mark.parametrize(("args", "words"), [(("--size", "12", "--mode", "upsert"), "inserts only"),
                                             (("--route", "json", "--tables", "3"), "--tables 1")])
def test_impossible_workloads_fail_in_one_line_before_anything_is_made(args: tuple[str, ...], words: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "kapow", "bench", *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1 and words in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_kapow_bench_says_how_to_install_the_benchmark_when_it_is_missing() -> None:
    code = ("import sys; sys.modules['kapow_bench'] = None; from kapow.cli import main; "
            "sys.exit(main(['bench', '-n', '10']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("kapow: bench: the benchmark is not installed; from a checkout: "
                                   "pip install -e '.[bench]'")


def test_the_final_state_checks_catch_a_lost_row_and_a_wrong_value() -> None:
    """The checks that make a run "exact" can fail: rows COPYed straight from the packets pass, then one changed
    value fails the field check and one deleted row the state check."""
    from kapow_bench.env import connect
    from kapow_bench.runs import prepare
    from kapow_bench.scratch import Scratch
    from kapow_bench.spec import Spec
    from kapow_bench.tables import copy_rows, read_state, sample_matches

    with Scratch(Spec(), partitions=1) as scratch:
        work = prepare(scratch, Spec(), 3000)
        copy_rows(work, work.ceiling_rows(), connections=2)
        assert read_state(work).got == work.expect and sample_matches(work)
        table = work.tables[0]
        with connect(table.database) as conn:
            conn.execute("UPDATE bench_events SET amount = amount + 0.01 WHERE event_id = %s", (work.n // 2 + 1,))
            assert not sample_matches(work)
            conn.execute("DELETE FROM bench_events WHERE event_id = 7")
        assert read_state(work).got != work.expect


def test_the_cpu_meter_counts_the_writer_s_backends_and_not_the_harness_s() -> None:
    from psycopg.conninfo import make_conninfo

    from kapow_bench.cpu import CpuMeter
    from kapow_bench.env import ADMIN_DSN, connect
    from kapow_bench.scratch import Scratch
    from kapow_bench.shapes import EVENTS
    from kapow_bench.spec import Spec

    burn = "SELECT count(*) FROM generate_series(1, 4000000)"
    with Scratch(Spec(), partitions=1) as scratch:
        scratch.create(EVENTS)
        db = scratch.databases[0]
        with connect(db) as harness, psycopg.connect(make_conninfo(ADMIN_DSN, dbname=db, application_name="kapow"),
                                                     autocommit=True) as writer:
            meter = CpuMeter([db], interval=0.1).start()
            harness.execute(burn)
            quiet = meter.stop()
            meter = CpuMeter([db], interval=0.1).start()
            writer.execute(burn)
            busy = meter.stop()
    assert quiet["postgres"] is not None and busy["postgres"] is not None
    assert busy["postgres"] >= 0.1 and quiet["postgres"] < busy["postgres"] / 5


def test_a_writer_dies_with_a_harness_that_crashed() -> None:
    """A harness killed outright (librdkafka segfaulted in one) must not leave its writer running beside every
    later run: the writer is started with PR_SET_PDEATHSIG."""
    import signal
    import time

    starter = ("import subprocess, sys, time\n"
               "from kapow_bench.writer import _die_with_the_harness\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
               " start_new_session=True, preexec_fn=_die_with_the_harness)\n"
               "print(child.pid, flush=True)\n"
               "time.sleep(120)\n")
    harness = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    assert harness.stdout is not None
    with harness.stdout:
        child = int(harness.stdout.readline())
    os.kill(child, 0)  # running
    harness.send_signal(signal.SIGKILL)
    harness.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the writer outlived its harness")


def test_the_writer_can_run_another_checkout_s_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from kapow_bench.writer import WRITER_PATH, writer_env

    monkeypatch.setenv("PYTHONPATH", "/a")
    monkeypatch.delenv(WRITER_PATH, raising=False)
    assert writer_env()["PYTHONPATH"] == "/a"
    monkeypatch.setenv(WRITER_PATH, "/old/src")
    assert writer_env()["PYTHONPATH"] == os.pathsep.join(["/old/src", "/a"])
    monkeypatch.delenv("PYTHONPATH")
    assert writer_env()["PYTHONPATH"] == "/old/src"


def test_the_client_floor_reads_and_sorts_every_packet_of_the_workload() -> None:
    """`python -m kapow_bench.floor` (docs/BENCHMARKS.md, *The client's floor*): both stages over the whole topic,
    every packet sorted into a row (the stage itself fails when sort files fewer), scratch objects dropped."""
    before = scratch_databases()
    proc = subprocess.run([sys.executable, "-m", "kapow_bench.floor", "-n", "25000", "--rounds", "1"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    medians = [line for line in proc.stdout.splitlines() if " median: " in line]
    assert [line.split()[0] for line in medians] == ["consume", "sort"], proc.stdout
    for line in medians:
        us = float(line.split("median:")[1].split("µs")[0])
        assert 0 < us < 1_000, line  # a CPU figure a packet, not a stage that read nothing
        assert "25,000 packets" in line
    assert scratch_databases() <= before
