"""Issue #10: the dead-letter queue at scale, against the real broker (``kapow dlq`` as a process).

Parked records are written straight to a system-errors topic, as the writer writes them, so that a queue of
thousands is quick to make and holds exactly what each test needs. Filters move only what they match; a reschedule
killed mid-way and started again republishes every record exactly once; listing pages cover the queue once, in
one order; every ``--json`` is JSON lines; with the broker down every command says so in one line, quickly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import msgspec
import pytest
from confluent_kafka import Message

from kapow.deadletter.fence import FENCE_KEY
from kapow.deadletter.reader import open_reader
from kapow.kafka.clients import make_producer
from tests.browser import harness
from tests.integration import kit
from tests.integration.kit import Queue

pytestmark = pytest.mark.integration


@pytest.fixture
def queue() -> Iterator[Queue]:
    with kit.queue_topics("kq", 3) as q:
        yield q


def park(q: Queue, n: int, *, code: str = "database_unavailable", vanity: str = "vault", table: str = "events",
         start: int = 0, failed_at_ms: int = 1_790_000_000_000) -> None:
    """``n`` parked records with the writer's headers (plus an unknown kapow-* one and a null-valued one)."""
    producer = make_producer(kit.BOOTSTRAP, **{"linger.ms": 20})
    dest = {"type": "postgres", "vanity": vanity, "database": "db", "schema": "public", "table": table}
    for i in range(start, start + n):
        headers = [("context", b'{"consumer": {"type": "data_pipeline"}}'), ("kapow-error-class", b"system"),
                   ("kapow-error-code", code.encode()), ("kapow-error-message", b"connection refused"),
                   ("kapow-destination", msgspec.json.encode(dest)), ("kapow-source-topic", q.source.encode()),
                   ("kapow-source-partition", str(i % 3).encode()), ("kapow-source-offset", str(i).encode()),
                   ("kapow-source-timestamp", b"1790000000000"), ("kapow-attempt", b"1"),
                   ("kapow-failed-at", str(failed_at_ms + i).encode()), ("kapow-future-header", b"?"),
                   ("trace", None)]
        while True:
            try:
                producer.produce(q.system, key=str(i).encode(), value=b'{"n": %d}' % i, headers=headers,
                                 partition=i % 3)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(30) == 0


def kapow(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kapow", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def dlq(q: Queue, *args: str) -> subprocess.CompletedProcess[str]:
    done = kapow("dlq", *args, "-b", kit.BOOTSTRAP, "--topic", q.system)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def committed_records(topic: str) -> list[tuple[int, int, dict[str, bytes]]]:
    """(partition, offset, headers) of every record a read_committed consumer sees."""
    with open_reader(kit.BOOTSTRAP) as reader:
        return [(m.partition(), m.offset(), {k: v for k, v in m.headers() or [] if v is not None})
                for m in reader.read(topic, reader.watermarks(topic))]


def test_filters_move_only_what_they_match(queue: Queue) -> None:
    park(queue, 6, code="database_unavailable", vanity="vault")
    park(queue, 4, code="timeout", vanity="vault", start=6)
    park(queue, 5, code="database_unavailable", vanity="attic", table="other", start=10)
    everything = lines(dlq(queue, "list", "--json", "--limit", "0"))
    assert len(everything) == 15
    assert {r["destination_label"] for r in everything} == {"vault/db/public.events", "attic/db/public.other"}

    moved = lines(dlq(queue, "reschedule", "--code", "timeout", "--json"))
    assert len(moved) == 1 and moved[0]["action"] == "rescheduled" and moved[0]["count"] == 4
    timeouts = {r["id"] for r in everything if r["code"] == "timeout"}
    assert set(moved[0]["ids"]) == timeouts
    purged = lines(dlq(queue, "purge", "--destination", "attic/db/public.other", "--json"))  # a pasted label
    attic = {r["id"] for r in everything if r["destination_label"] == "attic/db/public.other"}
    assert purged[0]["count"] == 5 and set(purged[0]["ids"]) == attic

    left = lines(dlq(queue, "list", "--json", "--limit", "0"))
    assert {r["id"] for r in left} == {r["id"] for r in everything} - timeouts - attic
    copies = committed_records(queue.source)
    assert len(copies) == 4  # only the rescheduled ones went back, each once, with their origin and next attempt
    by_id = {r["id"]: r for r in everything}
    origins = {c[2]["kapow-origin"].decode() for c in copies}
    assert origins == {by_id[i]["origin"] for i in timeouts}
    assert all(c[2]["kapow-attempt"] == b"2" and "kapow-error-code" not in c[2] for c in copies)
    markers = Counter(json.loads(v)["action"] for v in
                      (m.value() for m in _done_messages(queue)))
    assert markers == {"rescheduled": 4, "purged": 5}
    assert dlq(queue, "reschedule", "--code", "timeout").returncode == 0  # nothing left to move: no-op
    assert len(committed_records(queue.source)) == 4


def _done_messages(q: Queue) -> list[Message]:
    """The markers on ``.done`` (without the movers' fences: :mod:`kapow.deadletter.fence`)."""
    with open_reader(kit.BOOTSTRAP) as reader:
        return [m for m in reader.read(q.done, reader.watermarks(q.done)) if m.key() != FENCE_KEY]


def test_pages_cover_the_queue_once_in_one_order_and_stats_sum_up(queue: Queue) -> None:
    park(queue, 25, code="database_unavailable")
    park(queue, 7, code="timeout", vanity="attic", start=25)
    everything = lines(dlq(queue, "list", "--json", "--limit", "0"))
    stamps = [(r["failed_at_ms"], r["partition"], r["offset"]) for r in everything]
    assert stamps == sorted(stamps) and len(stamps) == 32  # oldest first
    seen: list[str] = []
    after: list[str] = []
    while True:
        done = dlq(queue, "list", "--json", "--limit", "10", *after)
        page = [str(r["id"]) for r in lines(done)]
        seen += page
        if "--after" not in done.stderr:
            break
        cursor = done.stderr.split("--after ")[1].split()[0]
        assert cursor == page[-1]
        after = ["--after", cursor]
    assert seen == [r["id"] for r in everything]
    stats = lines(dlq(queue, "stats", "--json"))
    assert {(s["code"], s["destination"]): s["count"] for s in stats} == {
        ("database_unavailable", "vault/db/public.events"): 25, ("timeout", "attic/db/public.events"): 7}
    shown = lines(dlq(queue, "show", str(everything[0]["id"]), str(everything[1]["id"]), "--json"))
    assert [r["id"] for r in shown] == [everything[0]["id"], everything[1]["id"]]
    assert shown[0]["value"] == '{"n": 0}' and shown[0]["headers"]["kapow-future-header"] == "?"
    missing = dlq(queue, "show", "2:999999")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "2:999999" in missing.stderr


def test_a_reschedule_killed_midway_and_run_again_republishes_each_record_once(queue: Queue) -> None:
    n = 20_000
    park(queue, n)
    proc = subprocess.Popen([sys.executable, "-m", "kapow", "dlq", "reschedule", "--all", "--chunk", "50", "-b",
                             kit.BOOTSTRAP, "--topic", queue.system], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        kit.wait_for(lambda: len(_done_messages(queue)) >= 1000 or proc.poll() is not None, 120,
                     "the first chunks to commit")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    half = len(_done_messages(queue))
    assert 0 < half < n, f"the reschedule was not interrupted mid-way ({half} of {n} done): make it longer"
    assert len(committed_records(queue.source)) == half  # a chunk is wholly visible or not at all

    done = dlq(queue, "reschedule", "--all", "--json")
    assert lines(done)[0]["count"] == n - half
    copies = committed_records(queue.source)
    origins = Counter(c[2]["kapow-origin"] for c in copies)
    assert len(copies) == n and len(origins) == n and max(origins.values()) == 1
    assert lines(dlq(queue, "list", "--json")) == []


def test_every_command_says_in_one_line_that_the_broker_is_down(tmp_path: object) -> None:
    dead = f"127.0.0.1:{harness.dead_port()}"
    env = kit.Env(topic="t", group="g", user_errors="t.user", system_errors="t.system", databases=["unused"],
                  tmp=tmp_path)  # type: ignore[arg-type]
    config = env.write_config()
    config.write_text(config.read_text().replace(kit.BOOTSTRAP, dead))
    commands = (["dlq", "list", "-b", dead], ["dlq", "show", "0:1", "-b", dead], ["dlq", "stats", "-b", dead],
                ["dlq", "reschedule", "--all", "-b", dead], ["dlq", "purge", "0:1", "-b", dead],
                ["errors", "list", "-b", dead], ["audit", "-c", str(config)])

    def timed(args: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        done = kapow(*args, timeout=60)
        return done, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:  # each waits on a dead port: wait for them together
        outcomes = list(pool.map(timed, commands))
    for args, (done, took) in zip(commands, outcomes, strict=True):
        assert done.returncode != 0, args
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, (args, done.stderr)
        assert dead in done.stderr, (args, done.stderr)
        assert took < 12, (args, took)


def test_a_mistyped_topic_is_said_not_read_as_an_empty_queue() -> None:
    """A helper's run: `dlq stats --topic <a typo>` printed "0 parked record(s)" and exited 0."""
    missing = f"kapow-test-nosuch-{uuid.uuid4().hex[:8]}"
    for action in ("stats", "list"):
        done = kapow("dlq", action, "-b", kit.BOOTSTRAP, "--topic", missing)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert f"topic {missing} does not exist" in done.stderr and "parked" not in done.stdout
