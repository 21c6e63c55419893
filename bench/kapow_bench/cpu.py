"""CPU per packet of the whole pipeline, from ``/proc``: the writer, the PostgreSQL backends that serve it, the broker.

On a machine where the writer, the broker and PostgreSQL share two cores, speed *is* CPU per packet, and the
writer's own share is only part of it: the backends' work per row (parsing JSON, index updates, WAL) and the
broker's (serving fetches) count as much. So a run is metered on all three:

* the writer (or the peer's JVM): ``utime + stime`` of all its threads, from ``/proc/<pid>/stat``;
* the PostgreSQL backends connected to the run's scratch databases, except the harness's own connections
  (``application_name = 'kapow-bench'``): autovacuum workers on the scratch tables count too, the server's shared
  processes (WAL writer, checkpointer) do not;
* the broker, from its pid file (:func:`kapow_bench.env.broker_pid`): it is shared with whatever else runs on the
  machine, so its figure is an upper bound on a busy machine.

Backends come and go, so a thread samples them every ``interval`` seconds and keeps each one's latest figure: a
backend that exits between two samples loses at most its last interval.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from kapow_bench.env import HARNESS_APP, admin_connection, broker_pid

_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, ValueError, IndexError):
        return 0.0


def proc_peak_rss(pid: int) -> int:
    """Peak RSS (``VmHWM``) in bytes of a live process; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class CpuMeter:
    """Meter one run: ``start()``, ``watch(pid)`` for the writer processes, ``stop()`` → CPU seconds by part."""

    def __init__(self, databases: list[str], *, interval: float = 0.5) -> None:
        self._databases = databases
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backends: dict[int, float] = {}
        self._writers: dict[int, float] = {}  # pid -> CPU when first watched
        self._writer_last: dict[int, float] = {}
        self._broker = broker_pid()
        self._broker_start = 0.0
        self._conn: Any = None
        self._result: dict[str, float | None] | None = None

    def start(self) -> CpuMeter:
        self._conn = admin_connection()
        if self._broker is not None:
            self._broker_start = proc_cpu(self._broker)
        self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def watch(self, pid: int, *, from_zero: bool = True) -> None:
        """Meter a writer process: from its birth (``from_zero``, a process spawned for the run) or from now."""
        self._writers[pid] = 0.0 if from_zero else proc_cpu(pid)

    def _sample(self) -> None:
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()"
            " AND coalesce(application_name, '') <> %s", (self._databases, HARNESS_APP)).fetchall()
        for (pid,) in rows:
            cpu = proc_cpu(int(pid))
            if cpu:
                self._backends[int(pid)] = max(cpu, self._backends.get(int(pid), 0.0))
        for pid in self._writers:
            cpu = proc_cpu(pid)
            if cpu:
                self._writer_last[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):  # a sample lost to a busy server is a sample, not a failed run
                self._sample()

    def stop(self) -> dict[str, float | None]:
        """Stop sampling (after one last sample) and return CPU seconds: writer, postgres, broker and total.
        Idempotent, so a ``finally`` can always call it: the second call returns the first one's figures."""
        if self._result is not None or self._conn is None:
            return self._result or {"writer": None, "postgres": None, "broker": None, "total": None}
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self._sample()
        finally:
            self._conn.close()
        writer = sum(self._writer_last.get(pid, 0.0) - start for pid, start in self._writers.items())
        postgres = sum(self._backends.values())
        broker = proc_cpu(self._broker) - self._broker_start if self._broker is not None else None
        total = writer + postgres + (broker or 0.0)
        self._result = {"writer": round(writer, 3), "postgres": round(postgres, 3),
                        "broker": None if broker is None else round(broker, 3), "total": round(total, 3)}
        return self._result


def per_packet(cpu: dict[str, float | None], n: int) -> dict[str, float | None]:
    """The meter's seconds as µs per packet, under the report's field names."""
    def us(v: float | None) -> float | None:
        return None if v is None else round(1e6 * v / max(n, 1), 2)

    return {"cpu_writer_s": cpu["writer"], "cpu_postgres_s": cpu["postgres"], "cpu_broker_s": cpu["broker"],
            "cpu_us_per_packet": us(cpu["writer"]), "cpu_pg_us_per_packet": us(cpu["postgres"]),
            "cpu_broker_us_per_packet": us(cpu["broker"]), "cpu_total_us_per_packet": us(cpu["total"])}
