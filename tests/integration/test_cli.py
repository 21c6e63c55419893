"""`kapow send` (both line forms, stdin and file) and `kapow check` against the real services."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration import kit
from tests.integration.test_landing import EVENTS_DDL, committed_everything, rows
from tests.tools.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


def kapow(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kapow", *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)


def test_send_wrapped_and_whole_packets_from_stdin_and_file(make_env: Callable[..., kit.Env],
                                                            writers: Callable[[kit.Env], kit.WriterProcess],
                                                            tmp_path: Path) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, EVENTS_DDL)
    dest = kit.dest(db, "events")
    wrapped = "\n".join(json.dumps({"destinations": [dest], "data": r}) for r in rows(100))
    whole = "\n".join(json.dumps({"pipeline_context": {"destinations": [dest]}, "data": r})
                      for r in rows(100, start=100))
    sent = kapow("send", "-b", kit.BOOTSTRAP, "-t", env.topic, stdin=wrapped + "\n\n")
    assert sent.returncode == 0, sent.stderr
    assert "sent 100 packets" in sent.stderr
    path = tmp_path / "packets.jsonl"
    path.write_text(whole + "\nnot json\n")
    sent = kapow("send", "-b", kit.BOOTSTRAP, "-t", env.topic, "-f", str(path))
    assert sent.returncode == 1 and "line 101: not JSON" in sent.stderr and "sent 100 packets" in sent.stderr
    missing = kapow("send", "-b", kit.BOOTSTRAP, "-t", env.topic, "-f", str(tmp_path / "nope.jsonl"))
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    writers(env)
    kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM events") == 200, 60, "200 rows")
    kit.wait_for(lambda: committed_everything(env), 30, "offsets committed")
    assert kit.read_all(env.user_errors) == []


def test_check_reports_each_destination(make_env: Callable[..., kit.Env]) -> None:
    env = make_env()
    dead = TcpProxy(kit.PG_PORT)  # never started: nothing listens there
    env.extra_destinations = [{"vanity": "dead", "host": "127.0.0.1", "port": dead.port,
                               "databases": [env.databases[0]], "connect_timeout_s": 2}]
    out = kapow("check", "-c", str(env.write_config()))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any(line.startswith("ok") and "Kafka" in line for line in lines)
    assert any(line.startswith("ok") and f"wh/{env.databases[0]}" in line and "PostgreSQL" in line for line in lines)
    assert any(line.startswith("FAIL") and f"dead/{env.databases[0]}" in line for line in lines)
    env.extra_destinations = []
    assert kapow("check", "-c", str(env.write_config())).returncode == 0
