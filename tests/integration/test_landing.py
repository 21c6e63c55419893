"""Issue: land packets end to end on a real Kafka and PostgreSQL (filter → sort → persist → commit)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from kapow.pipeline.runner import CLOSE_TIMEOUT_S
from tests.integration import kit

pytestmark = pytest.mark.integration

EVENTS_DDL = """
CREATE TABLE public.events (
    id      bigint PRIMARY KEY,
    account text NOT NULL,
    amount  numeric(12,2) NOT NULL,
    at      timestamptz NOT NULL,
    meta    jsonb,
    note    text NOT NULL DEFAULT 'none'
)
"""


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": i, "account": f"acct-{i % 50}", "amount": f"{i % 1000}.{i % 100:02d}",
         "at": "2026-11-24T10:00:00Z", "meta": {"n": i, "tags": ["a", "b"]}}
        for i in range(start, start + n)
    ]


def committed_everything(env: kit.Env) -> bool:
    ends = kit.end_offsets(env.topic)
    committed = kit.committed_offsets(env.group, env.topic)
    return all(committed.get(p, -1) == end for p, end in ends.items() if end > 0)


def test_10k_land_exactly_once_and_replay_changes_nothing(make_env: Callable[..., kit.Env],
                                                          writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, EVENTS_DDL)
    batch = kit.packets([kit.dest(db, "events")], rows(10_000))
    kit.publish(env.topic, batch)
    w = writers(env)
    kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM events") == 10_000, 60, "10,000 rows")
    kit.wait_for(lambda: committed_everything(env), 30, "offsets committed to the end")
    snapshot = kit.sql(db, "SELECT md5(string_agg(id::text || account || amount::text || meta::text, ',' ORDER BY id))"
                           " FROM events")

    kit.publish(env.topic, batch)  # the same 10,000 again
    kit.wait_for(lambda: committed_everything(env), 60, "the replay committed")
    assert kit.scalar(db, "SELECT count(*) FROM events") == 10_000
    assert kit.sql(db, "SELECT md5(string_agg(id::text || account || amount::text || meta::text, ',' ORDER BY id))"
                       " FROM events") == snapshot
    assert kit.scalar(db, "SELECT count(DISTINCT id) FROM events") == 10_000
    assert kit.scalar(db, "SELECT min(id) FROM events") == 0 and kit.scalar(db, "SELECT max(id) FROM events") == 9_999
    # values were cast by PostgreSQL from JSON as documented: numeric exact, defaults applied, jsonb kept
    row = kit.sql(db, "SELECT amount, note, meta, at FROM events WHERE id = 1234")[0]
    assert row[0] == Decimal("234.34") and row[1] == "none" and row[2] == {"n": 1234, "tags": ["a", "b"]}
    assert row[3].isoformat() == "2026-11-24T10:00:00+00:00"
    assert w.alive()
    assert w.stop() == 0
    assert kit.read_all(env.user_errors) == [] and kit.read_all(env.system_errors) == []


def test_records_without_header_are_skipped_and_committed(make_env: Callable[..., kit.Env],
                                                          writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, EVENTS_DDL)
    # foreign traffic: no header, a different header value, and JSON that would even be a valid packet
    kit.publish(env.topic, kit.packets([kit.dest(db, "events")], rows(300)), pipeline=False)
    kit.publish(env.topic, [b"not even json"] * 200, pipeline=False,
                headers=[("context", b'{"consumer": {"type": "something_else"}}')])
    kit.publish(env.topic, kit.packets([kit.dest(db, "events")], rows(50, start=1000)))
    writers(env)
    kit.wait_for(lambda: committed_everything(env), 60, "committed offsets equal the end offsets")
    assert kit.scalar(db, "SELECT count(*) FROM events") == 50
    assert kit.scalar(db, "SELECT min(id) FROM events") == 1000
    assert kit.read_all(env.user_errors) == []


def test_filtered_stretch_alone_still_moves_offsets(make_env: Callable[..., kit.Env],
                                                    writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    kit.publish(env.topic, [b"foreign"] * 1000, pipeline=False)
    writers(env)
    kit.wait_for(lambda: committed_everything(env), 60, "offsets past a topic of foreign traffic only")
    assert sum(kit.committed_offsets(env.group, env.topic).values()) == 1000


def test_two_destinations_land_in_both(make_env: Callable[..., kit.Env],
                                       writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env(n_databases=2)
    a, b = env.databases
    kit.sql(a, EVENTS_DDL)
    kit.sql(b, EVENTS_DDL)
    kit.publish(env.topic, kit.packets([kit.dest(a, "events"), kit.dest(b, "events")], rows(2_000)))
    writers(env)
    for db in (a, b):
        kit.wait_for(lambda db=db: kit.scalar(db, "SELECT count(*) FROM events") == 2_000, 60, f"rows in {db}")
    kit.wait_for(lambda: committed_everything(env), 30, "offsets committed")
    totals = "SELECT sum(id), sum(amount) FROM events"
    assert kit.sql(a, totals) == kit.sql(b, totals)


def _published_in_background(topic: str, values: list[bytes]) -> subprocess.Popen[bytes]:
    """Publish from another process, paced, so that the writer is interrupted mid-stream, not after it."""
    path = Path(f"/tmp/{topic}.bin")
    path.write_bytes(b"\n".join(values))
    code = (
        "import sys, time\n"
        "from tests.integration import kit\n"
        f"vals = open({str(path)!r}, 'rb').read().split(b'\\n')\n"
        "from kapow.client import Publisher\n"
        f"with Publisher(kit.BOOTSTRAP, {topic!r}) as pub:\n"
        "    for i, v in enumerate(vals):\n"
        "        pub.send_raw(v, str(i).encode())\n"
        "        if i % 2000 == 1999: pub._producer.flush(); time.sleep(0.1)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.mark.parametrize("kills", [3])
def test_kill9_mid_stream_then_restart_lands_all_once(make_env: Callable[..., kit.Env],
                                                      writers: Callable[[kit.Env], kit.WriterProcess],
                                                      kills: int) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, EVENTS_DDL)
    # A kill -9 leaves landed batches uncommitted: they are consumed again and their rows are no-ops. Nothing lost
    # (every id), nothing doubled (the key), nothing changed by a replay (the values, summed).
    total = 40_000
    env.pipeline = {"batch_max_messages": 1000}
    publisher = _published_in_background(env.topic, kit.packets([kit.dest(db, "events")], rows(total)))
    try:
        for k in range(kills):
            w = writers(env)
            w.wait_assigned()
            target = (k + 1) * total // (kills + 2)
            kit.wait_for(lambda t=target: kit.scalar(db, "SELECT count(*) FROM events") >= t, 90, f"{target} rows")
            w.kill9()
        writers(env)
        assert publisher.wait(120) == 0
        kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM events") == total, 120, "every row")
        kit.wait_for(lambda: committed_everything(env), 60, "offsets committed")
    finally:
        if publisher.poll() is None:
            publisher.kill()
    assert kit.scalar(db, "SELECT count(DISTINCT id) FROM events") == total
    expected = sum(Decimal(r["amount"]) for r in rows(total))
    assert kit.scalar(db, "SELECT sum(amount) FROM events") == expected


def test_sigterm_mid_stream_drains_exits_0_within_its_deadline_and_restart_lands_rest(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, EVENTS_DDL)
    total = 30_000
    deadline = 10.0
    env.pipeline = {"batch_max_messages": 1000, "shutdown_deadline_s": deadline}
    publisher = _published_in_background(env.topic, kit.packets([kit.dest(db, "events")], rows(total)))
    try:
        w = writers(env)
        w.wait_assigned()
        kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM events") >= 5_000, 90, "5,000 rows")
        started = time.monotonic()
        w.signal(signal.SIGTERM)
        code = w.proc.wait(15)
        elapsed = time.monotonic() - started
        assert code == 0, w.log()[-2000:]
        assert "writer stopped" in w.log()
        assert "shutdown deadline reached" not in w.log(), "a healthy database: everything in flight should drain"
        # the promise is the deadline, plus the bounded steps after it (leaving the group, the last acks): with slack
        assert elapsed < deadline + CLOSE_TIMEOUT_S + 5, f"exit took {elapsed:.1f} s"
        # what it had committed is at most what had landed: offsets never run ahead of data
        committed = sum(max(o, 0) for o in kit.committed_offsets(env.group, env.topic).values())
        assert committed <= kit.scalar(db, "SELECT count(*) FROM events")
        writers(env)
        assert publisher.wait(120) == 0
        kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM events") == total, 120, "the rest")
        kit.wait_for(lambda: committed_everything(env), 60, "offsets committed")
    finally:
        if publisher.poll() is None:
            publisher.kill()


BAD_CONFIGS = {
    "missing key": ("[kafka]\ntopics = ['t']\n[[destinations]]\nvanity = 'a'\ndatabases = ['d']\n",
                    "bootstrap_servers"),
    "wrong type": ("[kafka]\nbootstrap_servers = 'x:1'\ntopics = ['t']\n[[destinations]]\nvanity = 'a'\n"
                   "databases = ['d']\nport = 'five'\n", "destinations[0].port"),
    "unknown field": ("[kafka]\nbootstrap_servers = 'x:1'\ntopics = ['t']\nbootstrap = 'typo'\n[[destinations]]\n"
                      "vanity = 'a'\ndatabases = ['d']\n", "bootstrap"),
    "no destinations": ("[kafka]\nbootstrap_servers = 'x:1'\ntopics = ['t']\n", "destinations"),
    "empty destinations": ("destinations = []\n[kafka]\nbootstrap_servers = 'x:1'\ntopics = ['t']\n",
                           "destinations"),
    "not toml": ("[kafka\n", "not valid TOML"),
    "duplicate vanity": ("[kafka]\nbootstrap_servers = 'x:1'\ntopics = ['t']\n[[destinations]]\nvanity = 'a'\n"
                         "databases = ['d']\n[[destinations]]\nvanity = 'a'\ndatabases = ['e']\n", "duplicate"),
    "missing file": (None, "no such config file"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_fails_with_one_line(case: str, tmp_path: Path) -> None:
    text, needle = BAD_CONFIGS[case]
    path = tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "kapow", "run", "-c", str(path)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_a_backlog_spread_over_200_tables_grows_its_batches_and_lands_exactly_once_through_a_kill(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    """Batches grow while a backlog spreads thin (kapow.pipeline.batch.BatchSizer): on the real path, and with a
    kill -9 in the middle of the bigger batches, every row lands once and every offset is committed."""
    import json

    env = make_env()
    db = env.databases[0]
    tables = [f"t{i:03d}" for i in range(200)]
    kit.sql(db, ";".join(f"CREATE TABLE {t} (id bigint PRIMARY KEY, v text NOT NULL)" for t in tables))
    per_table = 60
    values: list[bytes] = []
    for i in range(per_table):  # round-robin: a batch of 500 has two or three rows per table
        for t in tables:
            values += kit.packets([kit.dest(db, t)], [{"id": i, "v": f"{t}-{i}"}])
    kit.publish(env.topic, values)
    env.pipeline = {"batch_max_messages": 500, "batch_spread_max_messages": 4000}
    total = per_table * len(tables)

    def landed() -> int:
        return int(kit.scalar(db, "SELECT " + " + ".join(f"(SELECT count(*) FROM {t})" for t in tables)))

    first = writers(env)
    first.wait_assigned()
    kit.wait_for(lambda: landed() >= total // 3, 90, "a third of the rows")
    first.kill9()
    second = writers(env)
    kit.wait_for(lambda: landed() == total, 120, "every row")
    kit.wait_for(lambda: committed_everything(env), 60, "offsets committed")
    sizes = [json.loads(line)["received"] for w in (first, second) for line in w.log().splitlines()
             if '"batch committed"' in line]
    assert max(sizes) > 500, f"batches never grew past batch_max_messages: {sorted(set(sizes))}"
    assert max(sizes) <= 4000, f"a batch past batch_spread_max_messages: {max(sizes)}"
    per = kit.scalar(db, " UNION ALL ".join(f"SELECT count(DISTINCT id) = {per_table} AS ok FROM {t}"
                                            for t in tables).join(("SELECT bool_and(ok) FROM (", ") s")))
    assert per is True, "a table is missing rows or holds a row twice"
    assert kit.read_all(env.user_errors) == [] and kit.read_all(env.system_errors) == []
