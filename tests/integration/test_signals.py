"""Signals (PRODUCT.md §5): SIGINT does what SIGTERM does; a second signal exits at once; the deadline holds with a
destination stuck.

SIGTERM/SIGINT: stop fetching, finish and commit what is in flight, leave the group, exit 0 within
``pipeline.shutdown_deadline_s``. A second signal exits at once (still safe: replays are no-ops). A destination is
made stuck with a proxy that accepts connections and holds their bytes (the database never answers), after the
writer has read the table's shape through it, so that batches are in flight when the signal comes (the writer's
``kapow_batches_in_flight`` says so). After each exit, a restarted writer lands everything: nothing was lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kapow.contract import make_packet
from kapow.pipeline.runner import CLOSE_TIMEOUT_S
from tests.browser.harness import free_port, metrics, value
from tests.integration import kit
from tests.tools.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

DDL = "CREATE TABLE events (id bigint PRIMARY KEY, v text NOT NULL)"
CANCEL_S = 2.0  # what the writer gives each statement it cancels on the way out (kapow.postgres.pool)


def packets(db: str, ids: range, vanity: str = "wh") -> list[bytes]:
    return [make_packet([kit.dest(db, "events", vanity=vanity)], {"id": i, "v": f"row {i}"}) for i in ids]


def count(db: str) -> int:
    return int(kit.scalar(db, "SELECT count(*) FROM events"))


def restart_lands_everything(env: kit.Env, writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    """A new writer lands all 200 rows and commits every offset, then stops cleanly, while the proxy still forwards.

    The rows alone would not prove it: the statement the proxy stalled reaches the database once it forwards again,
    after its writer is gone (its replay is then a no-op). The committed offsets are the new writer's.
    """
    again = writers(env)
    kit.wait_for(lambda: count(env.databases[0]) == 200
                 and sum(max(o, 0) for o in kit.committed_offsets(env.group, env.topic).values()) == 200,
                 60, "every row, and every offset committed, after a restart")
    assert again.stop() == 0


def in_flight(url: str) -> float:
    return value(metrics(url), "kapow_batches_in_flight")


def stuck_writer(env: kit.Env, writers: Callable[[kit.Env], kit.WriterProcess], proxy: TcpProxy,
                 deadline_s: float) -> tuple[kit.WriterProcess, str]:
    """A writer whose destination ``stuck`` lands 100 rows through ``proxy``, then hangs with 100 more in flight."""
    db = env.databases[0]
    env.extra_destinations = [{"vanity": "stuck", "host": "127.0.0.1", "port": proxy.port, "databases": [db]}]
    env.pipeline = {"shutdown_deadline_s": deadline_s, "redrive": False}
    port = free_port()
    env.http_listen = f"127.0.0.1:{port}"
    url = f"http://127.0.0.1:{port}"
    w = writers(env)
    w.wait_assigned()
    kit.publish(env.topic, packets(db, range(100), vanity="stuck"))
    kit.wait_for(lambda: count(db) == 100, 60, "the first rows, through the proxy")
    proxy.mode = "stall"
    kit.publish(env.topic, packets(db, range(100, 200), vanity="stuck"))
    kit.wait_for(lambda: in_flight(url) >= 1, 30, "batches in flight for the stuck destination")
    return w, url


def test_sigint_mid_stream_stops_like_sigterm(make_env: Callable[..., kit.Env],
                                              writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, DDL)
    deadline = 10.0
    env.pipeline = {"batch_max_messages": 500, "shutdown_deadline_s": deadline}
    total = 20_000
    from tests.integration.test_landing import _published_in_background

    publisher = _published_in_background(env.topic, packets(db, range(total)))
    try:
        w = writers(env)
        w.wait_assigned()
        kit.wait_for(lambda: count(db) >= 3_000, 90, "3,000 rows")
        started = time.monotonic()
        w.signal(signal.SIGINT)
        code = w.proc.wait(deadline + CLOSE_TIMEOUT_S + 10)
        elapsed = time.monotonic() - started
        log = w.log()
        assert code == 0, log[-2000:]
        assert "signal SIGINT: finishing in-flight batches, then leaving" in log
        assert "writer stopped" in log and "partitions revoked" in log
        assert "shutdown deadline reached" not in log, "a healthy database: everything in flight should drain"
        assert elapsed < deadline + CLOSE_TIMEOUT_S + 5, f"exit took {elapsed:.1f} s"
        committed = sum(max(o, 0) for o in kit.committed_offsets(env.group, env.topic).values())
        assert 0 < committed <= count(db), "offsets ran ahead of the rows"
        writers(env)
        assert publisher.wait(120) == 0
        kit.wait_for(lambda: count(db) == total, 120, "the rest, after a restart")
    finally:
        if publisher.poll() is None:
            publisher.kill()


def test_a_second_signal_exits_at_once_and_nothing_is_lost(make_env: Callable[..., kit.Env],
                                                           writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, DDL)
    deadline = 60.0
    with TcpProxy(kit.PG_PORT) as proxy:
        w, _url = stuck_writer(env, writers, proxy, deadline)
        w.signal(signal.SIGTERM)
        kit.wait_for(lambda: "signal SIGTERM: finishing in-flight batches" in w.log(), 10, "the first signal")
        assert w.alive(), "the writer left without finishing what was in flight"
        started = time.monotonic()
        w.signal(signal.SIGINT)
        code = w.proc.wait(deadline)
        elapsed = time.monotonic() - started
        assert code == 128 + signal.SIGINT
        assert "kapow: second signal, exiting at once" in w.log()
        assert elapsed < deadline / 10, f"the second signal took {elapsed:.1f} s of a {deadline:.0f} s deadline"
        assert count(db) == 100
        proxy.mode = "forward"
        restart_lands_everything(env, writers)


def test_the_deadline_holds_with_a_destination_stuck(make_env: Callable[..., kit.Env],
                                                     writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, DDL)
    deadline = 3.0
    with TcpProxy(kit.PG_PORT) as proxy:
        w, _url = stuck_writer(env, writers, proxy, deadline)
        committed_before = sum(max(o, 0) for o in kit.committed_offsets(env.group, env.topic).values())
        started = time.monotonic()
        w.signal(signal.SIGTERM)
        code = w.proc.wait(60)
        elapsed = time.monotonic() - started
        log = w.log()
        assert code == 0, log[-2000:]
        assert "shutdown deadline reached with" in log and "writer stopped" in log
        # it waited for its deadline (it tried to finish), then gave up within bounded steps: cancelling the
        # statements under way, leaving the group, the last acks; with slack
        bound = deadline + CANCEL_S * 4 + CLOSE_TIMEOUT_S + 5
        # (leaving the group comes out of the deadline: the batches get what is left of it, at least two thirds)
        assert deadline * 2 / 3 <= elapsed < bound, f"exit took {elapsed:.1f} s with a {deadline:.0f} s deadline"
        committed = sum(max(o, 0) for o in kit.committed_offsets(env.group, env.topic).values())
        assert committed == committed_before == 100, "offsets moved past packets that never landed"
        proxy.mode = "forward"
        restart_lands_everything(env, writers)


def test_a_signal_received_while_waiting_for_the_broker_is_kept_even_when_it_answers() -> None:
    # the lost-signal race: SIGTERM came during the broker check, the broker answered, and the writer started and
    # ran on until it was killed (seen in CI as a writer that ignored SIGTERM for 20 s)
    from kapow.cli.run import StartSignals, _wait_for_broker

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        early = StartSignals()
        os.kill(os.getpid(), signal.SIGTERM)
        kit.wait_for(lambda: early.received == [signal.SIGTERM], 5, "the signal recorded")
        assert _wait_for_broker(kit.BOOTSTRAP, {}, early) == 0  # not started, though the broker answers
        early = StartSignals()
        assert _wait_for_broker(kit.BOOTSTRAP, {}, early) is None  # no signal: start
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_sigterm_at_any_moment_of_the_start_stops_the_writer(make_env: Callable[..., kit.Env],
                                                             tmp_path: Path) -> None:
    # one writer per moment, from before its interpreter has imported anything to after it joined its group:
    # each exits by itself (0, or killed by the signal before Python installed any handler), none runs on
    env = make_env()
    config = env.write_config()
    delays = [0.15 * i for i in range(1, 9)]  # 0.15 .. 1.2 s after the spawn
    procs = []
    for i, _ in enumerate(delays):
        log = (tmp_path / f"start-{i}.log").open("wb")
        procs.append((subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(config)],
                                       stdout=log, stderr=log), log))
    started = time.monotonic()
    for (proc, _log), delay in zip(procs, delays, strict=True):
        time.sleep(max(0.0, started + delay - time.monotonic()))
        proc.send_signal(signal.SIGTERM)
    codes = []
    try:
        for proc, _log in procs:
            try:
                codes.append(proc.wait(40))
            except subprocess.TimeoutExpired:
                codes.append(None)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()
    assert all(code in (0, -signal.SIGTERM) for code in codes), (
        codes, [(tmp_path / f"start-{i}.log").read_text()[-1500:] for i, c in enumerate(codes) if c not in (0, -15)])
