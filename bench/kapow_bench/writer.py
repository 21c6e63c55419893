"""KaPoW's writer as its own process, and how the harness knows it has finished.

The writer runs as ``python -m kapow run -c FILE``, exactly as in production, so its CPU time and peak RSS are its
own, not the harness's, which publishes and polls meanwhile. A run is over when the writer's consumer group has
committed every offset of the topic: KaPoW commits an offset only once its packet has landed (or sits on an error
topic, which the run's final check would then catch), so this is "everything landed" for any mode and any number
of tables, at the cost of one small request to the broker per poll instead of a ``count(*)`` over every table.
The run's clock itself comes from the database (:mod:`kapow_bench.tables`), not from this poll.
"""

from __future__ import annotations

import compileall
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from kapow.errors import KapowError
from kapow_bench.cpu import proc_peak_rss
from kapow_bench.env import BOOTSTRAP
from kapow_bench.report import Progress


def precompile() -> None:
    """Write the bytecode of the ``kapow`` package, as ``pip install`` of a wheel does.

    The checkout is installed editable, and under ``PYTHONDONTWRITEBYTECODE`` (set on these machines) every
    writer start compiled its 55 modules again: 45 ms of each run's clock that no installed writer pays.
    """
    import kapow

    compileall.compile_dir(str(Path(kapow.__file__).parent), quiet=1)
    other = os.environ.get(WRITER_PATH)
    if other and (Path(other) / "kapow").is_dir():
        compileall.compile_dir(str(Path(other) / "kapow"), quiet=1)


# Where the writer's code comes from when it is not this checkout's: another checkout's ``src`` (a worktree of an
# older commit), so that two versions of the writer are measured by the same harness on the same machine.
WRITER_PATH = "KAPOW_BENCH_WRITER_PATH"
_PR_SET_PDEATHSIG = 1


_prctl: Any = None
try:  # resolved here, not in the child: a dlopen between fork and exec could wait on a lock another thread held
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    pass


def _die_with_the_harness() -> None:  # pragma: no cover - runs in the child, between fork and exec
    """Linux: SIGTERM the writer when the harness (the thread that started it: always its main thread) dies. A
    harness that crashed (librdkafka once segfaulted in it, 2026-11-26) left its writer running, and every later
    run on the machine was measured beside it."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def writer_env() -> dict[str, str]:
    """The writer's environment: the harness's, with ``KAPOW_BENCH_WRITER_PATH`` first on its Python path."""
    env = dict(os.environ)
    other = env.get(WRITER_PATH)
    if other:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (other, env.get("PYTHONPATH")) if p)
    return env


class WriterProcess:
    """One ``kapow run`` process with its own config and log; stopped with SIGTERM (then SIGKILL) on close."""

    def __init__(self, config: str, workdir: Path, name: str, *, profile: Path | None = None) -> None:
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(config)
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.spawned = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(self.config_path)],
                                     stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True,
                                     # one pre-resolved C call in the child, no lock taken (glibc resets its
                                     # malloc locks at fork): the threads' hazard does not apply
                                     env=writer_env(), preexec_fn=_die_with_the_harness)  # noqa: PLW1509
        self.pid = self.proc.pid
        self._spy: subprocess.Popen[bytes] | None = None
        if profile is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            self._spy = subprocess.Popen([spy, "record", "-f", "raw", "-r", "100", "--threads", "-o", str(profile),
                                          "-p", str(self.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise KapowError(f"the writer exited with {self.proc.returncode}: {' | '.join(tail)[-400:]}")

    def wait_assigned(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while b"partitions assigned" not in self.log_path.read_bytes():
            self.check_alive()
            if time.monotonic() > deadline:
                raise KapowError(f"the writer got no partitions within {timeout:.0f} s (log: {self.log_path})")
            time.sleep(0.05)

    def peak_rss(self) -> int:
        return proc_peak_rss(self.pid)

    def close(self) -> None:
        if self._spy is not None and self._spy.poll() is None:
            self._spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            try:
                self._spy.wait(30)
            except subprocess.TimeoutExpired:
                self._spy.kill()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class Alive(Protocol):
    def check_alive(self) -> None: ...


def end_offsets(topic: str) -> dict[int, int]:
    """The high watermark of every partition of ``topic`` (after publishing: where a finished group stands)."""
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "kapow-bench-probe", "enable.auto.commit": False})
    try:
        meta = probe.list_topics(topic, timeout=10).topics[topic]
        return {p: int(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]) for p in meta.partitions}
    finally:
        probe.close()


def wait_committed(group: str, topic: str, label: str, procs: list[Alive], *, timeout: float,
                   interval: float = 0.1) -> None:
    """Poll the group's committed offsets until they reach the end of every partition (or fail in one line)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    ends = end_offsets(topic)
    total = sum(ends.values())
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP, "log_level": 3})
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in ends])]
    bar = Progress(label, total)
    deadline = time.monotonic() + timeout
    done = 0
    while True:
        try:
            answer = admin.list_consumer_group_offsets(request, request_timeout=5)[group].result(timeout=10)
            done = sum(max(0, tp.offset) for tp in answer.topic_partitions)
        except Exception:  # the group is still joining: nothing committed yet
            done = 0
        bar(done)
        if done >= total:
            break
        for p in procs:
            p.check_alive()
        if time.monotonic() > deadline:
            raise KapowError(f"{label}: only {done:,}/{total:,} records handled within {timeout:.0f} s")
        time.sleep(interval)
    bar.done()
