"""Every shell and Python example of README.md and docs/OPERATIONS.md runs as pasted, against the running
services and a real writer started with the example config (``examples/kapow.toml``).

Only the names are this run's own, so that it never meets another run's data: the demo's database, topic,
group, error topics and HTTP port are swapped for uuid-named ones (and ``examples/kapow.toml`` for the config
that says so) in the config and in each example alike. An example that fails, or a README packet that does not
land, fails the test; a block that cannot run as pasted must say why in a marker (``tests/docs/examples.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from kapow.config import load_config
from kapow.demo import TABLE_DDL, to_toml
from tests.docs.examples import Example, extract, run
from tests.integration import kit

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "OPERATIONS.md"]
EXAMPLES = [e for doc in DOCS for e in extract(doc)]
README_PAYMENT_IDS = (900001, 900002)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    names: dict[str, str]
    env: dict[str, str]
    database: str
    log: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("docs")
    base = kit.uid("kdocs")
    database, topic, group = base, f"{base}.events", f"{base}.group"
    user_errors, system_errors = f"{base}.user", f"{base}.system"
    port = _free_port()
    example = load_config(ROOT / "examples" / "kapow.toml")
    config = msgspec.structs.replace(
        example,
        kafka=msgspec.structs.replace(example.kafka, bootstrap_servers=kit.BOOTSTRAP, group_id=group, topics=[topic],
                                      user_errors_topic=user_errors, system_errors_topic=system_errors),
        destinations=[msgspec.structs.replace(example.destinations[0], host=kit.PG_HOST, port=kit.PG_PORT,
                                              databases=[database])],
        http=msgspec.structs.replace(example.http, listen=f"127.0.0.1:{port}"),
    )
    config_path = tmp / "kapow.toml"
    config_path.write_text(to_toml(config))
    kit.create_database(database)
    kit.sql(database, TABLE_DDL)
    kit.create_topic(topic)  # as `kapow demo` does before its writer starts
    env = {**os.environ, "KAPOW_ADMIN_TOKEN": uuid.uuid4().hex, "PGPORT": str(kit.PG_PORT),
           "KAPOW_BOOTSTRAP": kit.BOOTSTRAP}
    names = {"examples/kapow.toml": str(config_path), "kapow.demo.events": topic, "kapow_demo": database,
             "127.0.0.1:8080": f"127.0.0.1:{port}", "127.0.0.1:9092": kit.BOOTSTRAP}
    log = tmp / "writer.log"
    with log.open("wb") as out:
        writer = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(config_path)], stdout=out,
                                  stderr=out, env=env)
    try:
        kit.wait_for(lambda: "partitions assigned" in log.read_text() or writer.poll() is not None, 60,
                     "the example writer's partitions")
        assert writer.poll() is None, log.read_text()[-3000:]
        yield World(names, env, database, log)
    finally:
        writer.send_signal(signal.SIGTERM)
        try:
            writer.wait(30)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait(10)
        kit.drop_database(database)
        try:
            kit.remove_topics([topic, user_errors, system_errors, f"{system_errors}.done"])
        except Exception:
            pass


def test_the_documents_have_examples_and_every_skip_says_why() -> None:
    by_doc = {doc.name: [e for e in EXAMPLES if e.path == doc] for doc in DOCS}
    assert sum(1 for e in by_doc["README.md"] if e.skip is None) >= 3
    assert sum(1 for e in by_doc["OPERATIONS.md"] if e.skip is None) >= 2
    assert all(e.skip is None or len(e.skip.split()) >= 3 for e in EXAMPLES)  # a reason, not a shrug


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.skip is None], ids=lambda e: e.id)
def test_example_runs_as_pasted(world: World, example: Example) -> None:
    proc = run(example, cwd=ROOT, env=world.env, names=world.names)
    assert proc.returncode == 0, (f"{example.id} failed ({proc.returncode}):\n{example.code}\n--- stdout\n"
                                  f"{proc.stdout[-2000:]}\n--- stderr\n{proc.stderr[-2000:]}")
    assert "Traceback" not in proc.stderr, proc.stderr


def test_the_readme_packets_landed(world: World) -> None:
    def landed() -> list[int]:
        return [r[0] for r in kit.sql(world.database, "SELECT payment_id FROM payments WHERE payment_id > 900000"
                                      " ORDER BY 1")]

    try:
        kit.wait_for(lambda: landed() == list(README_PAYMENT_IDS), 30, "the README's packets")
    except AssertionError:
        raise AssertionError(f"landed {landed()}, expected {README_PAYMENT_IDS}; writer log:\n"
                             f"{world.log.read_text()[-3000:]}") from None


def test_extract_finds_runnable_blocks_and_their_skip_reasons(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# t\n\n```bash\necho one\n```\n\n<!-- example: skip (needs your own data here) -->\n"
                   "```python\nraise SystemExit(3)\n```\n\n```json\n{}\n```\n\n```\nplain\n```\n"
                   "```python\nraise SystemExit(3)\n```\n")
    found = extract(doc)
    assert [(e.line, e.kind, e.skip) for e in found] == [(3, "shell", None), (8, "python", "needs your own data here"),
                                                        (19, "python", None)]
    failing = run(found[2], cwd=tmp_path, env=os.environ, names={})
    assert failing.returncode == 3  # a broken example fails
    assert run(found[0], cwd=tmp_path, env=os.environ, names={"one": "two"}).stdout == "two\n"
