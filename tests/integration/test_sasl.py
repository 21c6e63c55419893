"""Issue 13, Kafka: a broker behind SASL_SSL with SCRAM-SHA-512, set up exactly as ``KAPOW_SERVICES_TLS=1 make
services`` sets it up (its certificates, its server.properties lines and its SCRAM user, both ways the broker's
own tools make one), on a private single-node KRaft broker from the same jars (the shared broker is never
restarted). The writer, ``kapow dlq``, ``kapow errors`` and ``kapow audit`` work through it; a wrong password, a
wrong CA or a wrong host name is one line from ``kapow check`` at once, not after its timeout.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kapow.client import Publisher
from kapow.config import Config, load_config
from kapow.contract import make_packet
from kapow.kafka.clients import check_access, ensure_topics
from tests.chaos.kafka_cluster import LIBS, LOG4J, free_ports
from tests.integration import kit

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "scripts" / "services.sh"
CHECK_WAIT_S = 10.0  # kapow check's own bound for an unreachable broker (kapow.health.BROKER_WAIT_S)
RUN_WAIT_S = 60.0  # kapow run's (kapow.cli.run.BROKER_WAIT_S)


@dataclass
class SaslBroker:
    dir: Path
    port: int  # PLAINTEXT (inter-broker, and the admin tools)
    sasl_port: int
    proc: subprocess.Popen[bytes]

    @property
    def tls(self) -> Path:
        return self.dir / "tls"

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.sasl_port}"  # the name in the server certificate, as advertised

    @property
    def password(self) -> str:
        return (self.tls / "kafka-kapow.password").read_text().strip()

    def java(self, main: str, *args: str) -> list[str]:
        return java(self.dir, main, *args)


def java(where: Path, main: str, *args: str) -> list[str]:
    return ["java", "-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={LOG4J}", f"-Dkafka.logs.dir={where}", "-cp", f"{LIBS}/*", main, *args]


@pytest.fixture(scope="module")
def broker() -> Iterator[SaslBroker]:
    if not any(LIBS.glob("kafka_*.jar")):
        pytest.fail(f"no Kafka jars in {LIBS}; run: make services (or set KAPOW_SERVICES_DIR)", pytrace=False)
    where = Path(tempfile.mkdtemp(prefix="kapow-sasl-"))
    port, controller, sasl_port = free_ports(3)
    env = {**os.environ, "KAPOW_SERVICES_DIR": str(where), "KAPOW_KAFKA_PORT": str(port),
           "KAPOW_KAFKA_CONTROLLER_PORT": str(controller), "KAPOW_KAFKA_SASL_PORT": str(sasl_port)}
    extra = subprocess.run(["bash", str(SERVICES), "sasl-properties"], capture_output=True, text=True, env=env,
                           timeout=120, check=True).stdout
    template = (ROOT / "services" / "kafka" / "server.properties.in").read_text()
    props = (template.replace("@DATA@", str(where / "data")).replace("@PORT@", str(port))
             .replace("@CONTROLLER_PORT@", str(controller)))
    (where / "server.properties").write_text(props + "offsets.topic.num.partitions=3\n" + extra)
    proc = None
    try:
        cluster_id = "-"
        while cluster_id.startswith("-"):  # StorageTool takes "-t -abc…" for an option: 1 id in 64 failed the fixture
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        password = (where / "tls" / "kafka-kapow.password").read_text().strip()
        subprocess.run(java(where, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c",
                            str(where / "server.properties"), "--add-scram",
                            f"SCRAM-SHA-512=[name=kapow,password={password}]"),
                       check=True, capture_output=True, timeout=120)
        with (where / "stdout.log").open("ab") as out:
            proc = subprocess.Popen(java(where, "kafka.Kafka", str(where / "server.properties")), stdout=out,
                                    stderr=out, start_new_session=True)
        b = SaslBroker(where, port, sasl_port, proc)
        settings = security(b)
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (where / "stdout.log").read_text()[-3000:]
            try:
                check_access(b.bootstrap, settings, timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield b
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        shutil.rmtree(where, ignore_errors=True)


def security(b: SaslBroker, *, password: str | None = None, ca: str = "ca.crt") -> dict[str, Any]:
    return {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "kapow",
            "sasl.password": password or b.password, "ssl.ca.location": str(b.tls / ca),
            "broker.address.family": "v4"}


@dataclass
class World:
    config: Path
    parsed: Config
    topic: str
    database: str
    secrets: list[str]


def config_text(b: SaslBroker, topic: str, database: str, password_file: Path, *, bootstrap: str | None = None,
                ca: str = "ca.crt", vault: bool = True) -> str:
    """A SASL_SSL config; ``vault`` adds a destination whose server is down (its packets park)."""
    down = ["[[destinations]]", 'vanity = "vault"', 'host = "127.0.0.1"', f"port = {free_ports(1)[0]}",
            f'databases = ["{database}"]', "connect_timeout_s = 1", ""] if vault else []
    return "\n".join([
        "[kafka]", f'bootstrap_servers = "{bootstrap or b.bootstrap}"', f'group_id = "{topic}.group"',
        f'topics = ["{topic}"]', f'user_errors_topic = "{topic}.user"', f'system_errors_topic = "{topic}.system"',
        'security_protocol = "SASL_SSL"', 'sasl_mechanism = "SCRAM-SHA-512"', 'sasl_username = "kapow"',
        f'sasl_password_file = "{password_file}"', f'ssl_ca_location = "{b.tls / ca}"',
        "[kafka.settings]", '"broker.address.family" = "v4"', "",
        "[[destinations]]", 'vanity = "wh"', f'host = "{kit.PG_HOST}"', f"port = {kit.PG_PORT}", 'user = "postgres"',
        f'databases = ["{database}"]', "", *down,
        "[pipeline]", "hold_s = 0.5", "retry_initial_backoff_s = 0.05", "redrive = false", "",
        "[http]", "enabled = false", "", "[log]", 'format = "json"', 'level = "DEBUG"']) + "\n"


@pytest.fixture
def world(broker: SaslBroker, tmp_path: Path) -> Iterator[World]:
    topic, database = kit.uid("ksasl"), kit.uid("ksasl")
    password_file = tmp_path / "kafka-password"
    password_file.write_text(broker.password)
    config = tmp_path / "sasl.toml"
    config.write_text(config_text(broker, topic, database, password_file))
    kit.create_database(database)
    kit.sql(database, "CREATE TABLE public.events (id bigint PRIMARY KEY, v text NOT NULL)")
    try:
        yield World(config, load_config(config), topic, database, [broker.password])
    finally:
        kit.drop_database(database)


def kapow(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kapow", *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_writer_dlq_errors_and_audit_over_sasl_ssl(broker: SaslBroker, world: World, tmp_path: Path) -> None:
    k = world.parsed.kafka
    assert k.settings["security.protocol"] == "SASL_SSL" and broker.password not in repr(k.settings)
    ensure_topics(k.bootstrap_servers, {world.topic: 2}, settings=k.settings)
    writer = kit.WriterProcess(world.config, tmp_path / "writer.log")
    try:
        writer.wait_assigned(60)
        good = [make_packet([kit.dest(world.database, "events")], {"id": i, "v": "ok"}) for i in range(20)]
        bad = [make_packet([kit.dest(world.database, "events")], {"id": i, "nope": 1}) for i in range(2)]
        parked = [make_packet([kit.dest(world.database, "events", vanity="vault")], {"id": i, "v": "x"})
                  for i in range(3)]
        with Publisher(k.bootstrap_servers, world.topic, settings=dict(k.settings)) as pub:
            for value in good + bad + parked:
                pub.send_raw(value, None)
        kit.wait_for(lambda: kit.scalar(world.database, "SELECT count(*) FROM events") == 20, 60, "20 rows")

        def dlq() -> list[dict[str, Any]]:
            done = kapow("dlq", "list", "--json", "-c", str(world.config))
            assert done.returncode == 0, done.stderr
            return [json.loads(line) for line in done.stdout.splitlines()]

        kit.wait_for(lambda: len(dlq()) == 3, 60, "3 parked records, listed through SASL_SSL")
        first = dlq()[0]["id"]
        done = kapow("dlq", "purge", first, "-c", str(world.config))
        assert done.returncode == 0, done.stderr
        assert [r["id"] for r in dlq()] != [] and first not in {r["id"] for r in dlq()}
        done = kapow("errors", "list", "--json", "-c", str(world.config))
        assert done.returncode == 0 and len(done.stdout.splitlines()) == 2, done.stderr
        assert writer.stop() == 0
    finally:
        writer.close()
    audit = kapow("audit", "--json", "-c", str(world.config))
    try:
        assert audit.returncode == 0, audit.stderr
        counts = json.loads(audit.stdout)
        assert {key: counts[key] for key in ("total", "landed", "user_errors", "parked", "purged", "missing")} == {
            "total": 25, "landed": 20, "user_errors": 2, "parked": 2, "purged": 1, "missing": 0}
    finally:
        from kapow.kafka.clients import delete_topics

        delete_topics(k.bootstrap_servers, [world.topic, f"{world.topic}.user", f"{world.topic}.system",
                                            f"{world.topic}.system.done"], settings=k.settings)
    log = writer.log()
    assert '"level": "debug"' in log and not any(secret in log + audit.stderr for secret in world.secrets)


def test_kapow_send_over_sasl_ssl(broker: SaslBroker, world: World) -> None:
    k = world.parsed.kafka
    ensure_topics(k.bootstrap_servers, {world.topic: 1}, settings=k.settings)
    line = json.dumps({"destinations": [kit.dest(world.database, "events")], "data": {"id": 1, "v": "sent"}})
    done = subprocess.run([sys.executable, "-m", "kapow", "send", "-c", str(world.config), "-t", world.topic],
                          input=line + "\n", capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def one_fail_line(config: Path) -> tuple[str, float]:
    started = time.monotonic()
    done = kapow("check", "-c", str(config), timeout=60)
    took = time.monotonic() - started
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert done.returncode == 1 and len(failed) == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    return failed[0], took


@pytest.mark.parametrize(("change", "needle"), [
    ("password", "SASL authentication failed: SASL authentication error: Authentication failed"),
    ("ca", "TLS: the broker's certificate does not verify"),
    ("host", "TLS: the broker's certificate does not verify"),
])
def test_a_refusal_is_one_line_from_check_at_once(broker: SaslBroker, world: World, tmp_path: Path, change: str,
                                                 needle: str) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-" + broker.password)
    password_file = wrong if change == "password" else tmp_path / "kafka-password"
    config = tmp_path / "bad.toml"
    config.write_text(config_text(broker, world.topic, world.database, password_file,
                                  bootstrap=f"127.0.0.1:{broker.sasl_port}" if change == "host" else None,
                                  ca="other-ca.crt" if change == "ca" else "ca.crt", vault=False))
    line, took = one_fail_line(config)
    assert needle in line and "Kafka at" in line, line
    assert took < CHECK_WAIT_S / 2, f"{took:.1f} s: the refusal waited for the timeout"  # not after a timeout
    assert broker.password not in line


def test_a_wrong_password_stops_kapow_run_at_start_in_one_line(broker: SaslBroker, world: World,
                                                               tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-" + broker.password)
    config = tmp_path / "bad.toml"
    config.write_text(config_text(broker, world.topic, world.database, wrong, vault=False))
    try:  # a refusal is final: well before the bound kapow run gives a broker that does not answer
        done = kapow("run", "-c", str(config), timeout=RUN_WAIT_S / 4)
    except subprocess.TimeoutExpired:
        pytest.fail(f"kapow run still waiting after {RUN_WAIT_S / 4:.0f} s for a broker that refused it")
    lines = [line for line in done.stderr.splitlines() if '"level": "debug"' not in line]  # (the config asks DEBUG)
    assert done.returncode == 1 and len(lines) == 1 and "SASL authentication failed" in lines[0], done.stderr


def test_a_user_made_with_kafka_configs_logs_in(broker: SaslBroker) -> None:
    """The other way services.sh makes the SCRAM user (a cluster formatted before TLS was asked for)."""
    password = uuid.uuid4().hex
    done = subprocess.run(broker.java("kafka.admin.ConfigCommand", "--bootstrap-server", f"127.0.0.1:{broker.port}",
                                      "--alter", "--entity-type", "users", "--entity-name", "kapow2", "--add-config",
                                      f"SCRAM-SHA-512=[password={password}]"),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    settings = {**security(broker, password=password), "sasl.username": "kapow2"}
    deadline = time.monotonic() + 30  # the credential reaches the broker through the metadata log
    while True:
        try:
            assert check_access(broker.bootstrap, settings, timeout=5) == 1
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
