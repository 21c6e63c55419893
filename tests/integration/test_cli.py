"""`kapow send` (both line forms, stdin and file) and `kapow check` against the real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration import kit
from tests.integration.test_landing import EVENTS_DDL, committed_everything, rows
from tests.tools.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


def kapow(*args: str, stdin: str | None = None, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kapow", *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False, env=env)


def demo_environ() -> dict[str, str]:
    """This environment without the address overrides `kapow demo` honours (KAPOW_KAFKA_PORT and friends, set
    when the suite runs on other ports): the demo tests are about the config they give, which already names
    the suite's broker and database, so the demo must run that file and not a copy re-pointed elsewhere."""
    overrides = {"KAPOW_BOOTSTRAP", "KAPOW_KAFKA_PORT", "KAPOW_PG_HOST", "KAPOW_PG_PORT"}
    return {k: v for k, v in os.environ.items() if k not in overrides}


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
    # the modes each server allows (issue 11): the default, insert and upsert
    wh = [line for line in lines if f"wh/{env.databases[0]}" in line]
    assert any(line.endswith("modes allowed: insert, upsert") for line in wh), wh
    assert any(line.startswith("FAIL") and f"dead/{env.databases[0]}" in line for line in lines)
    env.extra_destinations = []
    assert kapow("check", "-c", str(env.write_config())).returncode == 0


# ---------------------------------------------------------------- the first hour (issue 18)

DEAD_BROKER = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a user-caused error must produce (and nothing that looks like a traceback or librdkafka)."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr and "%3|" not in proc.stderr and "%4|" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_publisher_as_the_readme_shows_it_delivers_without_a_flush(make_env: Callable[..., kit.Env]) -> None:
    env = make_env()
    script = ("from kapow.client import Publisher\n"
              f"Publisher({kit.BOOTSTRAP!r}, {env.topic!r}).send([{kit.dest('db', 't')!r}], {{'id': 1}})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    records = kit.read_all(env.topic, expect=1, timeout=20)
    assert len(records) == 1
    assert records[0].headers.get("context") is not None
    assert json.loads(records[0].value or b"")["data"] == {"id": 1}


def test_publisher_with_block_and_close_flush(make_env: Callable[..., kit.Env]) -> None:
    from kapow.client import Publisher

    env = make_env()
    with Publisher(kit.BOOTSTRAP, env.topic) as pub:
        for i in range(5):
            pub.send([kit.dest("db", "t")], {"id": i})
    assert pub.acked == 5  # counted by delivery callbacks: only a flush serves them
    closing = Publisher(kit.BOOTSTRAP, env.topic)
    closing.send([kit.dest("db", "t")], {"id": 5})
    closing.close()
    assert closing.acked == 1
    assert len(kit.read_all(env.topic, expect=6, timeout=20)) == 6


def test_send_reports_every_bad_line_and_sends_the_rest(make_env: Callable[..., kit.Env], tmp_path: Path) -> None:
    env = make_env()
    dest = kit.dest("db", "t")
    lines = [
        json.dumps({"destinations": [dest], "data": {"id": 1}}),                       # 1 good
        "not json",                                                                    # 2
        json.dumps({"destinations": [dest]}),                                          # 3 no data
        json.dumps({"destinations": [{**dest, "vanity": 7}], "data": {"id": 2}}),      # 4 not a string
        json.dumps({"destinations": [dest], "data": {"blob": "x" * 1_100_000}}),       # 5 too large
        json.dumps({"pipeline_context": {"destinations": [dest]}, "data": {"id": 3}}),  # 6 good
        "",
        json.dumps({"destinations": "warehouse", "data": {"id": 4}}),                  # 8 not a list
        json.dumps({"destinations": [dest], "data": {"id": 5}}),                       # 9 good
        "[1, 2]",                                                                      # 10 not an object
        '"str"',                                                                       # 11
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = kapow("send", "-b", kit.BOOTSTRAP, "-t", env.topic, "-f", str(path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    reported = [line for line in proc.stderr.splitlines() if line.startswith("kapow send: line ")]
    assert [line.split(":")[1].strip() for line in reported] == ["line 2", "line 3", "line 4", "line 5", "line 8",
                                                                        "line 10", "line 11"]
    assert 'line 3: wrapped line: no "data"' in proc.stderr
    assert "line 4: wrapped line: destinations[0].vanity: expected `str`, got `int`" in proc.stderr
    assert "line 5: 1,100,131 bytes" in proc.stderr and "more than the 1,000,000 Kafka takes" in proc.stderr
    assert "line 10: a line is a JSON object" in proc.stderr and "not list: not sent" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"sent 3 packets to {env.topic} (7 lines not sent)"
    values = sorted(json.loads(r.value or b"")["data"]["id"] for r in kit.read_all(env.topic, expect=3, timeout=20))
    assert values == [1, 3, 5]


def test_send_with_the_broker_down_is_one_line_naming_it_within_a_bound(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"destinations": [kit.dest("db", "t")], "data": {"id": 1}}) + "\n")
    started = time.monotonic()
    proc = kapow("send", "-b", DEAD_BROKER, "-t", "kapow.test.nowhere", "-f", str(path))
    took = time.monotonic() - started
    line = one_line_error(proc)
    assert line == f"kapow: send: Kafka at {DEAD_BROKER} cannot be reached: Connection refused (gave up after 10 s)"
    assert took < 30, took


def dead_broker_config(tmp_path: Path, fmt: str = "json") -> Path:
    path = tmp_path / "dead.toml"
    path.write_text(f'[kafka]\nbootstrap_servers = "{DEAD_BROKER}"\ntopics = ["t"]\n'
                    '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\n'
                    f'[http]\nenabled = false\n[log]\nformat = "{fmt}"\n')
    return path


def test_run_with_the_broker_down_waits_in_json_lines_then_gives_up_naming_it(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kapow", "run", "-c", str(dead_broker_config(tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "KAPOW_BROKER_WAIT_S": "4"})
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert 4 <= took < 20, took
    records = [json.loads(line) for line in proc.stderr.strip().splitlines()]  # every line is JSON
    assert records[0]["msg"].startswith(f"waiting for Kafka at {DEAD_BROKER}: Connection refused")
    assert records[-1]["msg"] == f"Kafka at {DEAD_BROKER} cannot be reached: Connection refused (gave up after 4 s)"
    assert len(records) <= 3  # one line per ~10 s while waiting, then the last one


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_run_honours_a_signal_at_once_while_waiting_for_the_broker(tmp_path: Path, sig: int, code: int) -> None:
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(dead_broker_config(tmp_path))],
                                stdout=log, stderr=log)
    try:
        kit.wait_for(lambda: "waiting for Kafka" in log_path.read_text(), 30, "the first waiting line")
        sent = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(10) == code
        assert time.monotonic() - sent < 3
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log_path.read_text()


def test_check_with_the_broker_down_names_it_in_one_line(tmp_path: Path) -> None:
    proc = kapow("check", "-c", str(dead_broker_config(tmp_path)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "%3|" not in proc.stderr, proc.stderr
    kafka = [line for line in proc.stdout.splitlines() if "Kafka" in line]
    assert len(kafka) == 1 and kafka[0].startswith("FAIL") and DEAD_BROKER in kafka[0], proc.stdout


BAD_TOML = '[kafka]\nbootstrap_servers = "127.0.0.1:9092"\ntopics = ["t"\n'


@pytest.mark.parametrize("command", [["run"], ["check"], ["demo", "--no-wait"], ["dlq", "list"]])
@pytest.mark.parametrize("problem", ["missing", "bad toml", "bad key"])
def test_config_mistakes_are_one_line_naming_the_file(tmp_path: Path, command: list[str], problem: str) -> None:
    path = tmp_path / "kapow.toml"
    if problem == "bad toml":
        path.write_text(BAD_TOML)
    elif problem == "bad key":
        path.write_text(BAD_TOML.replace('["t"\n', '["t"]\nbootstrap = "x"\n'))
    proc = kapow(*command, "-c", str(path))
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert line.startswith(f"kapow: config error: {path}: ")
    expected = {"missing": "no such config file", "bad toml": "not valid TOML", "bad key": "kafka: contains unknown "
                "field bootstrap"}[problem]
    assert expected in line, line


def test_send_from_a_missing_file_and_to_no_topic_are_one_line(tmp_path: Path) -> None:
    assert one_line_error(kapow("send", "-t", "x", "-f", str(tmp_path / "nope.jsonl"))).endswith("no such file")
    proc = kapow("send", "-f", str(tmp_path / "nope.jsonl"))  # argparse: usage line plus one error line
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "the following arguments are required: -t" \
        in proc.stderr


def _processes_mentioning(text: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
        except OSError:
            continue
    return out


def test_demo_bad_packets_are_bad_value_and_sigterm_stops_its_writer(make_env: Callable[..., kit.Env],
                                                                     tmp_path: Path) -> None:
    env = make_env()
    config = env.write_config()
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "kapow", "demo", "-c", str(config), "-n", "1600"],
                                stdout=out, stderr=out, cwd=tmp_path,  # not the checkout: the config is given
                                env=demo_environ())
    try:
        kit.wait_for(lambda: "Press Ctrl+C" in out_path.read_text() or demo.poll() is not None, 90, "the demo's rows")
        shown = out_path.read_text()
        assert "landed    1597   (expected 1597; 2 bad packets went to" in shown, shown
        assert "HTTP is off" in shown
        writer = set(_processes_mentioning(str(config))) - {demo.pid}
        assert len(writer) == 1  # the demo's writer, `kapow run -c CONFIG`
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(40) == 0
    finally:
        if demo.poll() is None:  # a failed assertion above: stop it the clean way first, so its writer goes too
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(40)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait(10)
        orphans = sorted(set(_processes_mentioning(str(config))) - {demo.pid})
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)  # fails the test below, but must not outlive it
    assert orphans == []  # the demo's writer is gone with it
    assert "writer exited with 0" in out_path.read_text()
    records = kit.read_all(env.user_errors, expect=2, timeout=20)
    assert sorted(r.headers["kapow-error-code"].decode() for r in records) == ["bad_value", "bad_value"]
    assert all(b"amount" in r.headers["kapow-error-message"] for r in records)


def test_demo_with_the_broker_down_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    config = dead_broker_config(tmp_path)
    config.write_text(config.read_text().replace('databases = ["db"]', f'databases = ["{kit.uid("kdemo")}"]'))
    database = config.read_text().split('databases = ["')[1].split('"')[0]
    line = one_line_error(kapow("demo", "-c", str(config), "--no-wait", env=demo_environ()))
    assert line.startswith(f"kapow: demo: Kafka at {DEAD_BROKER} cannot be reached: Connection refused"), line
    assert kit.scalar("postgres", "SELECT count(*) FROM pg_database WHERE datname = %s", (database,)) == 0


def test_demo_finds_its_default_config_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kapow.demo import default_config

    monkeypatch.chdir(tmp_path)
    assert default_config() == Path(__file__).resolve().parents[2] / "examples" / "kapow.toml"


def test_a_publisher_is_not_kept_alive_by_its_exit_hook() -> None:
    import gc
    import weakref

    from kapow.client import Publisher

    closed = Publisher(kit.BOOTSTRAP, "kapow.test.unused")
    closed.close()
    dropped = Publisher(kit.BOOTSTRAP, "kapow.test.unused")  # never closed: flushed when collected
    refs = [weakref.ref(closed), weakref.ref(dropped)]
    del closed, dropped
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_a_publisher_that_cannot_deliver_at_exit_says_so_in_one_line() -> None:
    script = ("from kapow.client import Publisher\n"
              f"Publisher({DEAD_BROKER!r}, 'kapow.test.nowhere', flush_timeout=2).send([{{'vanity': 'w'}}], "
              "{'id': 1})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == ("kapow.client: 1 packet(s) to kapow.test.nowhere not delivered; 1 still unacknowledged "
                         "after 2 s"), proc.stderr
    assert "Traceback" not in proc.stderr and "%3|" not in proc.stderr
