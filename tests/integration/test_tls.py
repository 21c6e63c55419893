"""Issue 13, databases: TLS with verify-full, client certificates, password files that rotate, a least-privilege
role, all against a real PostgreSQL of the test's own (the shared one stays plaintext) with certificates made by
``scripts/services.sh certs``, as ``make services`` makes them.

Each refusal (a wrong CA, a wrong host name) is one line from ``kapow check`` and from the writer itself; the
least-privilege SQL is the block of docs/SECURITY.md, run as written (names swapped), and the writer lands
inserts, upserts and deletes through it; a password rotated under a running writer is picked up without a restart.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kapow.contract import make_packet
from tests.integration import kit
from tests.tools.private_postgres import PrivatePostgres

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = f"pw-{uuid.uuid4().hex}"
ROTATED = f"pw-{uuid.uuid4().hex}"


def make_certs(where: Path) -> Path:
    """The CA and certificates, made by the same recipe as ``make services`` (one source for both)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "services.sh"), "certs", str(where)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return where


@dataclass
class TlsServer:
    pg: PrivatePostgres
    certs: Path
    client_key: Path  # a copy the test's user owns, mode 0600 (libpq insists)
    database: str

    def admin(self, statement: str, database: str | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.dsn(database or self.database), autocommit=True) as conn:
            cur = conn.execute(statement.encode())
            return cur.fetchall() if cur.description else []


def least_privilege_sql() -> str:
    """The SQL block of docs/SECURITY.md marked as the least-privilege role."""
    text = (ROOT / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- least-privilege[^>]*-->\s*```sql\n(.*?)```", text, re.S)
    assert found, "docs/SECURITY.md lost its least-privilege SQL block"
    return found.group(1)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    certs = make_certs(tmp_path_factory.mktemp("tls"))
    pg = PrivatePostgres()
    try:
        for name in ("server.crt", "server.key", "ca.crt"):
            shutil.copy(certs / name, pg.data / name)
            if os.geteuid() == 0:
                shutil.chown(pg.data / name, "postgres", "postgres")
        (pg.data / "server.key").chmod(0o600)
        with (pg.data / "postgresql.conf").open("a") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n")
        hba = pg.data / "pg_hba.conf"  # as services.sh: cert for kapow_cert, a password for kapow_writer, trust else
        hba.write_text("hostssl all kapow_cert 127.0.0.1/32 cert\nhost all kapow_cert all reject\n"
                       "hostssl all kapow_writer 127.0.0.1/32 scram-sha-256\nhost all kapow_writer all reject\n"
                       + hba.read_text())
        pg.start()
        database = kit.uid("ktls")
        pg.create_database(database)
        key = certs / "client-own.key"
        shutil.copy(certs / "client.key", key)
        key.chmod(0o600)
        server = TlsServer(pg, certs, key, database)
        server.admin("CREATE ROLE kapow_cert LOGIN", "postgres")
        server.admin("CREATE TABLE public.payments (payment_id bigint PRIMARY KEY, amount numeric NOT NULL, "
                     "note text)")
        server.admin("GRANT INSERT ON public.payments TO kapow_cert")
        server.admin("CREATE SCHEMA ledger; CREATE TABLE ledger.entries (id bigint PRIMARY KEY)")  # no USAGE given
        server.admin(least_privilege_sql().replace("analytics", database).replace("'change-me'", f"'{PASSWORD}'"))
        granted = server.admin("SELECT privilege_type FROM information_schema.role_table_grants WHERE grantee = "
                               "'kapow_writer' AND table_name = 'payments' ORDER BY 1")
        assert granted == [("DELETE",), ("INSERT",), ("SELECT",), ("UPDATE",)], granted
        server.admin(f'GRANT CONNECT, TEMP ON DATABASE "{database}" TO kapow_cert')  # PUBLIC's were revoked
        yield server
    finally:
        pg.destroy()


def destination(server: TlsServer, vanity: str, **keys: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"vanity": vanity, "host": "localhost", "port": server.pg.port, "user": "kapow_writer",
                            "databases": [server.database], "sslmode": "verify-full",
                            "sslrootcert": str(server.certs / "ca.crt"), "connect_timeout_s": 3,
                            "modes": ["insert", "upsert", "delete"], "tables": ["public.payments"]}
    return {**base, **keys}


def config_text(topic: str, destinations: list[dict[str, Any]], group: str | None = None) -> str:
    lines = ["[kafka]", f'bootstrap_servers = "{kit.BOOTSTRAP}"', f'group_id = "{group or kit.uid("g")}"',
             f'topics = ["{topic}"]', f'user_errors_topic = "{topic}.user"', f'system_errors_topic = "{topic}.system"']
    for dest in destinations:
        lines += ["", "[[destinations]]"] + [f"{k} = {kit._toml(v)}" for k, v in dest.items()]
    lines += ["", "[pipeline]", "hold_s = 2", "retry_initial_backoff_s = 0.05", "circuit_open_s = 0.5",
              "", "[http]", "enabled = false", "", "[log]", 'format = "json"']
    return "\n".join(lines) + "\n"


def check(config: Path) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-m", "kapow", "check", "-c", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout.splitlines()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "kapow-writer-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def test_check_connects_with_verify_full_by_password_file_and_by_client_certificate(
        tls: TlsServer, tmp_path: Path, password_file: Path) -> None:
    config = tmp_path / "ok.toml"
    config.write_text(config_text("unused", [
        destination(tls, "pw", password_file=str(password_file)),
        destination(tls, "cert", user="kapow_cert", sslcert=str(tls.certs / "client.crt"),
                    sslkey=str(tls.client_key), modes=["insert"])]))
    code, lines = check(config)
    assert code == 0, lines
    for vanity, user in (("pw", "kapow_writer"), ("cert", "kapow_cert")):
        mine = [line for line in lines if line.startswith(f"ok    {vanity}/")]
        assert any(f"as {user}): PostgreSQL" in line and "(TLSv1." in line and "sslmode verify-full" in line
                   for line in mine), lines
    assert any("pw/" in line and "public.payments: table with INSERT, UPDATE, DELETE, SELECT (insert, upsert, delete)"
               in line for line in lines), lines
    assert any("cert/" in line and "public.payments: table with INSERT (insert)" in line for line in lines), lines


@pytest.mark.parametrize(("keys", "needle"), [
    ({"sslrootcert": "other-ca.crt"}, "TLS: the server's certificate does not verify against sslrootcert"),
    ({"host": "127.0.0.1"},
     'does not match host name "127.0.0.1" (sslmode verify-full checks the certificate is issued for host'),
    ({"user": "kapow_cert", "modes": ["insert"]}, "connection requires a valid client certificate"),
    ({"sslmode": "require", "port": kit.PG_PORT, "host": "127.0.0.1", "sslrootcert": None},
     "TLS: server does not support SSL, but SSL was required"),
])
def test_each_refusal_is_one_line_from_check(tls: TlsServer, tmp_path: Path, password_file: Path,
                                             keys: dict[str, Any], needle: str) -> None:
    if keys.get("sslrootcert"):
        keys = {**keys, "sslrootcert": str(tls.certs / keys["sslrootcert"])}
    dest = {k: v for k, v in destination(tls, "wh", password_file=str(password_file), **keys).items() if v is not None}
    config = tmp_path / "bad.toml"
    config.write_text(config_text("unused", [dest]))
    code, lines = check(config)
    assert code == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 1 and needle in failed[0], lines


def test_the_writer_lands_every_mode_as_the_least_privilege_role(tls: TlsServer, tmp_path: Path,
                                                                 password_file: Path) -> None:
    """The docs' grants are enough for insert, upsert and delete over verify-full, and a revoked one is named."""
    topic = kit.uid("ktls")
    kit.create_topic(topic, 2)
    config = tmp_path / "writer.toml"
    config.write_text(config_text(topic, [destination(tls, "wh", password_file=str(password_file))]))
    writer = kit.WriterProcess(config, tmp_path / "writer.log")
    try:
        writer.wait_assigned(60)
        dest = kit.dest(tls.database, "payments")
        kit.publish(topic, [make_packet([dest], {"payment_id": i, "amount": "1.50"}) for i in range(10)])
        kit.wait_for(lambda: tls.admin("SELECT count(*) FROM payments")[0][0] == 10, 60, "10 inserts")
        kit.publish(topic, [make_packet([{**dest, "mode": "upsert"}], {"payment_id": 3, "amount": "9.99"}),
                            make_packet([{**dest, "mode": "delete"}], {"payment_id": 4})])
        kit.wait_for(lambda: tls.admin("SELECT count(*) FROM payments")[0][0] == 9, 60, "the delete")
        assert tls.admin("SELECT amount::text FROM payments WHERE payment_id = 3") == [("9.99",)]
        sessions = tls.admin("SELECT DISTINCT usename, ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                             "WHERE application_name = 'kapow'", "postgres")
        assert sessions == [("kapow_writer", True)]
        assert writer.stop() == 0
        assert kit.read_all(f"{topic}.user", allow_missing=True) == []  # no packet refused for a privilege
    finally:
        writer.close()
        kit.remove_topics([topic, f"{topic}.user", f"{topic}.system"])
    assert PASSWORD not in writer.log()
    # each missing grant is named, per table, before a packet finds it
    config.write_text(config_text(topic, [destination(tls, "wh", password_file=str(password_file),
                                                      tables=["public.payments", "ledger.entries"])]))
    tls.admin("REVOKE UPDATE ON public.payments FROM kapow_writer")
    tls.admin(f'REVOKE TEMP ON DATABASE "{tls.database}" FROM kapow_writer')
    try:
        code, lines = check(config)
    finally:
        tls.admin("GRANT UPDATE ON public.payments TO kapow_writer")
        tls.admin(f'GRANT TEMP ON DATABASE "{tls.database}" TO kapow_writer')
    failed = [line.split("): ", 1)[1] for line in lines if line.startswith("FAIL")]
    assert code == 1 and len(failed) == 3, lines
    assert failed[0].startswith("missing TEMP on database") and "pg_temp" in failed[0]
    assert failed[1] == "public.payments: public.payments lacks UPDATE"
    assert failed[2] == "ledger.entries: missing USAGE on schema ledger"


def test_the_writer_says_why_in_one_line_when_tls_refuses(tls: TlsServer, tmp_path: Path,
                                                         password_file: Path) -> None:
    """At start the writer knows no database yet (lanes open on first use): the first packet for one whose
    certificate does not verify gives one line naming the destination and the reason; the packet waits, then
    parks (a system error, redriven later), it is never the client's error."""
    topic = kit.uid("ktls")
    kit.create_topic(topic, 1)
    config = tmp_path / "wrong-ca.toml"
    config.write_text(config_text(topic, [destination(tls, "wh", password_file=str(password_file),
                                                      sslrootcert=str(tls.certs / "other-ca.crt"))]))
    writer = kit.WriterProcess(config, tmp_path / "wrong-ca.log")
    try:
        writer.wait_assigned(60)
        kit.publish(topic, [make_packet([kit.dest(tls.database, "payments")], {"payment_id": 1, "amount": "1"})])
        parked = kit.read_all(f"{topic}.system", expect=1, timeout=60)
        assert len(parked) == 1 and parked[0].headers["kapow-error-code"] == b"database_unavailable"
        assert b"certificate verify failed" in parked[0].headers["kapow-error-message"]
        assert writer.stop() == 0
    finally:
        writer.close()
        kit.remove_topics([topic, f"{topic}.user", f"{topic}.system"])
    lines = [line for line in writer.log().splitlines() if "certificate verify failed" in line]
    assert lines and all(f"wh/{tls.database}" in line for line in lines), writer.log()[-3000:]


def test_kapow_run_says_at_start_that_a_certificate_does_not_verify(tls: TlsServer, tmp_path: Path,
                                                                  password_file: Path) -> None:
    topic = kit.uid("ktls")
    kit.create_topic(topic, 1)
    config = tmp_path / "start.toml"
    config.write_text(config_text(topic, [destination(tls, "wh", password_file=str(password_file),
                                                      sslrootcert=str(tls.certs / "other-ca.crt"))]))
    writer = kit.WriterProcess(config, tmp_path / "start.log")
    try:
        writer.wait_assigned(60)
        kit.wait_for(lambda: "does not verify against sslrootcert" in writer.log(), 15, "the line at start")
    finally:
        writer.close()
        kit.remove_topics([topic, f"{topic}.user", f"{topic}.system"])
    lines = [line for line in writer.log().splitlines() if "does not verify against sslrootcert" in line]
    assert len(lines) == 1 and '"level": "error"' in lines[0] and f"wh/{tls.database}" in lines[0]


def test_a_rotated_password_file_is_used_without_a_restart(tls: TlsServer, tmp_path: Path,
                                                          password_file: Path) -> None:
    topic = kit.uid("ktls")
    kit.create_topic(topic, 1)
    config = tmp_path / "rotate.toml"
    config.write_text(config_text(topic, [destination(tls, "wh", password_file=str(password_file))]))
    writer = kit.WriterProcess(config, tmp_path / "rotate.log")
    dest = kit.dest(tls.database, "payments")
    try:
        writer.wait_assigned(60)
        kit.publish(topic, [make_packet([dest], {"payment_id": 100, "amount": "1"})])
        kit.wait_for(lambda: tls.admin("SELECT count(*) FROM payments WHERE payment_id = 100")[0][0] == 1, 60,
                     "the first row")
        # rotate: the role's password, then the secret file; the writer's sessions are ended, so the next packet
        # needs a new connection, which must read the file again
        tls.admin(f"ALTER ROLE kapow_writer PASSWORD '{ROTATED}'")
        password_file.write_text(ROTATED)
        ended = tls.admin("SELECT count(*) FROM (SELECT pid FROM pg_stat_activity WHERE usename = 'kapow_writer' "
                          "OFFSET 0) AS theirs WHERE pg_terminate_backend(theirs.pid)")  # (OFFSET 0: filter first)
        assert ended[0][0] >= 1  # the pooled sessions are gone: the next write must log in again
        kit.publish(topic, [make_packet([dest], {"payment_id": 101, "amount": "1"})])
        kit.wait_for(lambda: tls.admin("SELECT count(*) FROM payments WHERE payment_id = 101")[0][0] == 1, 60,
                     "the row after the rotation")
        assert writer.alive() and writer.stop() == 0
    finally:
        tls.admin(f"ALTER ROLE kapow_writer PASSWORD '{PASSWORD}'")
        writer.close()
        kit.remove_topics([topic, f"{topic}.user", f"{topic}.system"])
    log = writer.log()
    assert PASSWORD not in log and ROTATED not in log
    assert kit.read_all(f"{topic}.system", allow_missing=True) == []  # nothing parked: at most a retry
