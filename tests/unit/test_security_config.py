"""Issue 13, offline: the TLS/SASL keys and secrets of the config, the password provider of the pool, the HTTP
tokens and roles, and the one-line reasons for refusals. Every bad config is one line naming the key."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import KafkaError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from kapow.config import DestinationConfig, parse_config
from kapow.credentials import FileSecret, Secret, SecretUnreadable, read_secret_file
from kapow.errors import ConfigError, KapowError
from kapow.health import connect_failure
from kapow.http.security import TokenGate, Tokens, who
from kapow.kafka.clients import admin_config, consumer_config, producer_config, refusal
from kapow.postgres.pool import ConnectionPool, PasswordUnavailable

KAFKA = """
[kafka]
bootstrap_servers = "127.0.0.1:9092"
topics = ["events"]
"""
DEST = """
[[destinations]]
vanity = "wh"
databases = ["analytics"]
"""
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def real_ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real self-signed certificate (librdkafka loads the CA when a client is made: a fake one fails)."""
    where = tmp_path_factory.mktemp("ca")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=test CA", "-days", "1", "-keyout", str(where / "ca.key"), "-out",
                    str(where / "ca.crt")], check=True, capture_output=True, timeout=60)
    return (where / "ca.crt").read_text()


@pytest.fixture
def files(tmp_path: Path, real_ca: str) -> dict[str, Path]:
    out = {}
    for name, mode in (("ca.crt", 0o644), ("client.crt", 0o644), ("client.key", 0o600), ("open.key", 0o644),
                       ("pw", 0o600)):
        path = tmp_path / name
        path.write_text("s3cret\n" if name == "pw" else real_ca if name == "ca.crt" else PEM)
        path.chmod(mode)
        out[name] = path
    return out


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "k.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("k.toml: ")
    return message


# ---------------------------------------------------------------------------------------------- databases
def test_destination_defaults_to_prefer_and_tls_keys_reach_the_connection_string(files: dict[str, Path]) -> None:
    plain = parse_config(KAFKA + DEST).destinations[0]
    assert plain.sslmode == "prefer" and "sslmode=prefer" in plain.conninfo("analytics")
    assert "sslrootcert" not in plain.conninfo("analytics") and plain.password() is None
    c = parse_config(KAFKA + DEST + f'sslmode = "verify-full"\nsslrootcert = "{files["ca.crt"]}"\n'
                     f'sslcert = "{files["client.crt"]}"\nsslkey = "{files["client.key"]}"\n')
    info = psycopg.conninfo.conninfo_to_dict(c.destinations[0].conninfo("analytics"))
    assert info["sslmode"] == "verify-full" and info["sslrootcert"] == str(files["ca.crt"])
    assert info["sslcert"] == str(files["client.crt"]) and info["sslkey"] == str(files["client.key"])
    assert "password" not in info


@pytest.mark.parametrize(("extra", "needle"), [
    ('sslmode = "verify-everything"', "destinations[0].sslmode: Invalid enum value 'verify-everything'"),
    ('sslmode = "verify-full"\nsslrootcert = "/nope/ca.crt"',
     "destinations[0].sslrootcert: /nope/ca.crt: no such file"),
    ('sslcert = "{client.crt}"', "destinations[0].sslkey: a client certificate needs both sslcert and sslkey"),
    ('sslcert = "{client.crt}"\nsslkey = "{open.key}"', "destinations[0].sslkey: {open.key} has mode 0644"),
    ('sslmode = "disable"\nsslrootcert = "{ca.crt}"', "destinations[0].sslmode: is disable"),
    ('sslmode = "verify-full"', "destinations[0].sslrootcert: sslmode verify-full needs the CA"),
    ('password_env = "HOME"\npassword_file = "{pw}"', "destinations[0].password_file: set password_env or"),
    ('password_file = "/nope/pw"', "destinations[0].password_file: /nope/pw: no such file"),
])
def test_bad_destination_security_is_one_line_naming_the_key(extra: str, needle: str, files: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt to fall back on
    for name, path in files.items():
        extra, needle = extra.replace(f"{{{name}}}", str(path)), needle.replace(f"{{{name}}}", str(path))
    assert needle in config_error(KAFKA + DEST + extra + "\n")


def test_password_file_is_read_again_for_each_connection_and_never_shown(files: dict[str, Path]) -> None:
    dest = parse_config(KAFKA + DEST + f'password_file = "{files["pw"]}"\n').destinations[0]
    first = dest.password()
    assert first == "s3cret" and repr(first) == "'***'" and "s3cret" not in repr({"password": first})
    files["pw"].write_text("rotated")  # Kubernetes writes no line break; echo does: both read the same
    assert dest.password() == "rotated"
    assert isinstance(first, FileSecret) and first.current() == "rotated" and first == "s3cret"
    files["pw"].write_text("")
    with pytest.raises(SecretUnreadable, match=r"destinations\[wh\].password_file: .* is empty"):
        dest.password()


def test_empty_or_huge_password_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(SecretUnreadable, match="larger than 64 KiB"):
        read_secret_file(str(big), "k")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "destinations[0].password_file" in config_error(KAFKA + DEST + f'password_file = "{empty}"\n')


def test_the_pool_asks_a_file_secret_again_and_a_failing_provider_is_an_operational_error(
        files: dict[str, Path]) -> None:
    secret = read_secret_file(str(files["pw"]), "destinations[wh].password_file")
    pool = ConnectionPool(name="wh/x", conninfo="host=127.0.0.1", password=secret)
    assert pool._current_password() == "s3cret"
    files["pw"].write_text("rotated\n")
    assert pool._current_password() == "rotated"
    files["pw"].unlink()
    with pytest.raises(PasswordUnavailable, match=r"password for wh/x: destinations\[wh\].password_file") as info:
        pool._current_password()
    assert isinstance(info.value, psycopg.OperationalError)  # classified like an unreachable server: retried
    assert ConnectionPool(name="p", conninfo="", password="fixed")._current_password() == "fixed"
    assert ConnectionPool(name="p", conninfo="", password=lambda: "called")._current_password() == "called"


def test_connect_failures_are_one_line_saying_what_to_check() -> None:
    dest = DestinationConfig(vanity="wh", databases=["d"], host="127.0.0.1", sslmode="verify-full",
                             sslrootcert="/etc/ca.crt", user="kapow_cert", password_file="/run/pw")
    pre = 'connection failed: connection to server at "127.0.0.1", port 5433 failed: '
    cases = {
        'server certificate for "localhost" (and 1 other name) does not match host name "127.0.0.1"':
            "TLS: server certificate for \"localhost\" (and 1 other name) does not match host name",
        "SSL error: certificate verify failed": "does not verify against sslrootcert /etc/ca.crt",
        "FATAL:  connection requires a valid client certificate": "the certificate's CN must be the user 'kapow_cert'",
        'FATAL:  password authentication failed for user "kapow_pw"\n' + pre + "FATAL:  password authentication "
        'failed for user "kapow_pw"': "(password_file /run/pw)",
        "server does not support SSL, but SSL was required": "TLS: server does not support SSL",
    }
    for raw, needle in cases.items():
        line = connect_failure(psycopg.OperationalError(pre + raw), dest)
        assert needle in line and "\n" not in line and "connection failed" not in line, (raw, line)
    refused = connect_failure(psycopg.OperationalError(pre + "Connection refused\n\tIs the server running on that "
                                                       "host and accepting TCP/IP connections?"), dest)
    assert refused == "Connection refused. Is the server running on that host and accepting TCP/IP connections?"
    both = pre + "Connection refused\n" + pre.replace("127.0.0.1", "::1") + "SSL error: certificate verify failed"
    assert "does not verify" in connect_failure(psycopg.OperationalError(both), dest)  # not the refused address


# ---------------------------------------------------------------------------------------------- Kafka
def test_typed_kafka_security_is_merged_into_every_clients_settings(files: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SASL_PW_FOR_KAPOW_TEST", "env-secret")
    text = KAFKA + ('security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "kapow"\n'
                    f'sasl_password_env = "SASL_PW_FOR_KAPOW_TEST"\nssl_ca_location = "{files["ca.crt"]}"\n'
                    '[kafka.settings]\n"broker.address.family" = "v4"\n') + DEST
    k = parse_config(text).kafka
    assert k.settings == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                          "sasl.username": "kapow", "kapow.sasl.password.env": "SASL_PW_FOR_KAPOW_TEST",
                          "ssl.ca.location": str(files["ca.crt"]), "broker.address.family": "v4"}
    assert "env-secret" not in repr(k)  # the settings say where the password is, never what
    for conf in (consumer_config(k.bootstrap_servers, "g", k.settings), producer_config(k.bootstrap_servers,
                 k.settings), admin_config(k.bootstrap_servers, k.settings)):  # every client gets it, read now
        assert conf["sasl.password"] == "env-secret" and repr(conf["sasl.password"]) == "'***'"
        assert conf["security.protocol"] == "SASL_SSL" and not any(key.startswith("kapow.") for key in conf)
    from kapow.demo import to_toml

    again = parse_config(to_toml(parse_config(text))).kafka  # a parsed config written back parses to the same
    assert again.settings == k.settings and "env-secret" not in to_toml(parse_config(text))
    from_file = parse_config(text.replace('sasl_password_env = "SASL_PW_FOR_KAPOW_TEST"',
                                          f'sasl_password_file = "{files["pw"]}"')).kafka
    assert admin_config("b:1", from_file.settings)["sasl.password"] == "s3cret"
    files["pw"].write_text("rotated")  # the next client reads the file again
    assert isinstance(producer_config("b:1", from_file.settings)["sasl.password"], Secret)
    assert producer_config("b:1", from_file.settings)["sasl.password"] == "rotated"


@pytest.mark.parametrize(("kafka", "needle"), [
    ('sasl_username = "u"', "kafka.sasl_username: needs kafka.security_protocol"),
    ('security_protocol = "SASL_SSL"\nsasl_username = "u"\nsasl_password_env = "HOME"',
     "kafka.sasl_mechanism: required with security_protocol = SASL_SSL"),
    ('security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "u"',
     "kafka.sasl_password_env: set one of sasl_password_env or sasl_password_file"),
    ('security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "u"\n'
     'sasl_password_env = "KAPOW_NOPE_UNSET"', "kafka.sasl_password_env: environment variable KAPOW_NOPE_UNSET"),
    ('security_protocol = "SSL"\nsasl_username = "u"', "kafka.sasl_username: has no effect with security_protocol"),
    ('security_protocol = "SASL_PLAINTEXT"\nssl_ca_location = "{ca.crt}"', "kafka.ssl_ca_location: has no effect"),
    ('security_protocol = "SSL"\nssl_ca_location = "/nope/ca"', "kafka.ssl_ca_location: /nope/ca: no such file"),
    ('security_protocol = "SSL"\nssl_certificate_location = "{client.crt}"',
     "kafka.ssl_key_location: a client certificate needs both"),
    ('security_protocol = "SASL_SSL"\nsasl_mechanism = "GSSAPI"', "kafka.sasl_mechanism: Invalid enum value 'GSSAPI'"),
    ('security_protocol = "SSL"\n[kafka.settings]\n"security.protocol" = "SASL_SSL"',
     "kafka.settings: 'security.protocol' is set by a typed key of [kafka] too"),
    ('security_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\nsasl_username = "u"\nsasl_password_env = "HOME"\n'
     '[kafka.settings]\n"sasl.mechanisms" = "SCRAM-SHA-256"', "kafka.settings: 'sasl.mechanisms' is set by a typed"),
    ('security_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\nsasl_username = "u"\nsasl_password_env = "HOME"\n'
     '[kafka.settings]\n"sasl.password" = "inline"', "kafka.settings: 'sasl.password' is set by a typed key"),
    ('security_protocol = "SSL"\nssl_ca_location = "{client.key}"',  # not a CA: librdkafka's trial says so
     "kafka.ssl_ca_location: Failed to create consumer: ssl.ca.location failed"),
])
def test_bad_kafka_security_is_one_line_naming_the_key(kafka: str, needle: str, files: dict[str, Path]) -> None:
    for name, path in files.items():
        kafka = kafka.replace(f"{{{name}}}", str(path))
    head, _, settings = kafka.partition("[kafka.settings]")
    text = KAFKA + head + "\n" + (f"[kafka.settings]{settings}\n" if settings else "") + DEST
    assert needle in config_error(text)


def test_a_broker_refusal_is_told_apart_from_silence() -> None:
    auth = KafkaError(KafkaError._AUTHENTICATION, "sasl_ssl://localhost:9094/bootstrap: SASL authentication error: "
                      "Authentication failed during authentication due to invalid credentials with SASL mechanism "
                      "SCRAM-SHA-512 (after 3ms in state AUTH_REQ)")
    assert "check kafka.sasl_username and its password" in (refusal(auth) or "")
    tls = KafkaError(KafkaError._SSL, "ssl://localhost:9094/bootstrap: SSL handshake failed: error:0A000086:SSL "
                     "routines::certificate verify failed: broker certificate could not be verified, verify that "
                     "ssl.ca.location is correctly configured or root CA certificates are installed (install "
                     "ca-certificates package) (after 5ms in state SSL_HANDSHAKE)")
    line = refusal(tls) or ""
    assert line.startswith("TLS: the broker's certificate does not verify (SSL handshake failed: certificate verify "
                           "failed)") and "ca-certificates" not in line and "0A000086" not in line
    refused = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: "
                         "Connection refused (after 0ms in state CONNECT)")
    assert refusal(refused) is None  # silence: worth waiting for
    assert refusal(KafkaError(KafkaError._SSL, "SSL handshake failed: Disconnected")) is None


# ---------------------------------------------------------------------------------------------- HTTP roles
ADMIN, READER, ALICE = "a" * 20 + "-admin", "r" * 20 + "-read", "alice-" + "x" * 20


def test_tokens_from_the_environment_and_files(tmp_path: Path) -> None:
    assert not Tokens.from_environment({}).enabled
    (tmp_path / "admin").write_text(ADMIN + "\n")
    (tmp_path / "tokens").write_text(f"# who role token\nalice admin {ALICE}\n\ngrafana read {'g' * 32}  # dash\n")
    tokens = Tokens.from_environment({"KAPOW_ADMIN_TOKEN_FILE": str(tmp_path / "admin"), "KAPOW_READ_TOKEN": READER,
                                      "KAPOW_TOKENS_FILE": str(tmp_path / "tokens")})
    assert tokens.names == ["admin", "read", "alice", "grafana"]
    found = tokens.identify(ALICE.encode())
    assert found is not None and (found.name, found.role) == ("alice", "admin") and ALICE not in repr(found)
    assert tokens.identify(READER.encode()).role == "read"  # type: ignore[union-attr]
    assert tokens.identify(b"") is None and tokens.identify(ADMIN[:-1].encode()) is None
    assert Tokens.from_environment({}, admin=ADMIN).names == ["admin"]


@pytest.mark.parametrize(("environ", "needle"), [
    ({"KAPOW_ADMIN_TOKEN": ADMIN, "KAPOW_ADMIN_TOKEN_FILE": "/x"}, "set KAPOW_ADMIN_TOKEN or KAPOW_ADMIN_TOKEN_FILE"),
    ({"KAPOW_READ_TOKEN_FILE": "/nope/token"}, "KAPOW_READ_TOKEN_FILE: cannot read /nope/token"),
    ({"KAPOW_ADMIN_TOKEN": "short"}, "token admin: at least 16 characters"),
    ({"KAPOW_ADMIN_TOKEN": ADMIN, "KAPOW_READ_TOKEN": ADMIN}, "token read: its name or its value is given twice"),
    ({"KAPOW_TOKENS_FILE": "{tokens}"}, "line 2: expected NAME ROLE TOKEN"),
])
def test_bad_tokens_fail_in_one_line(environ: dict[str, str], needle: str, tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(f"alice admin {ALICE}\nbob superuser {'b' * 20}\n")
    environ = {k: v.replace("{tokens}", str(tmp_path / "tokens")) for k, v in environ.items()}
    with pytest.raises(KapowError) as info:
        Tokens.from_environment(environ)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert "b" * 20 not in str(info.value)  # a token never shows in an error either


async def _echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(who(request.scope))


def test_the_gate_enforces_roles_and_passes_the_token_name() -> None:
    import asyncio

    async def run() -> None:
        app = Starlette(routes=[Route("/api/thing", _echo, methods=["GET", "POST"]), Route("/healthz", _echo)])
        gate = TokenGate(app, Tokens([("admin", "admin", ADMIN), ("grafana", "read", READER)]))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://t") as client:
            def auth(token: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {token}"}
            assert (await client.get("/healthz")).status_code == 200  # not /api: open
            for method in ("GET", "POST"):
                r = await client.request(method, "/api/thing")
                assert r.status_code == 401 and "missing" in r.json()["error"]
                r = await client.request(method, "/api/thing", headers=auth("nope" * 5))
                assert r.status_code == 401 and "wrong" in r.json()["error"]
                r = await client.request(method, "/api/thing", headers={"Authorization": ADMIN})  # no scheme
                assert r.status_code == 401
                r = await client.request(method, "/api/thing", headers=auth(ADMIN))
                assert r.status_code == 200 and r.text == "admin"
            r = await client.get("/api/thing", headers=auth(READER))
            assert r.status_code == 200 and r.text == "grafana"
            r = await client.post("/api/thing", headers=auth(READER))
            assert r.status_code == 403 and "'grafana' may read, not reschedule or purge" in r.json()["error"]
        open_gate = TokenGate(app, Tokens())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=open_gate), base_url="http://t") as client:
            r = await client.post("/api/thing")
            assert r.status_code == 200 and r.text == "anonymous"

    asyncio.run(run())


def test_secret_repr_is_masked_everywhere_it_could_leak() -> None:
    s = Secret("hunter2-hunter2")
    assert repr(s) == "'***'" and str(s) == "hunter2-hunter2" and f"{s}" == "hunter2-hunter2"
    assert "hunter2" not in repr([s]) and "hunter2" not in repr({"sasl.password": s})
    assert os.fspath(Path("/x")) == "/x"  # (pathlib untouched: Secret is only used for values)


def test_start_up_check_logs_one_line_per_bad_destination_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import socket

    from kapow.health import log_destination_problems

    with socket.socket() as s:  # a loopback port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    config = parse_config(KAFKA + DEST + f"port = {dead}\nconnect_timeout_s = 1\n")
    logger = logging.getLogger("kapow.test.preflight")
    with caplog.at_level(logging.ERROR, logger="kapow.test.preflight"):
        assert log_destination_problems(config, logger) == 1
    (record,) = caplog.records
    assert record.getMessage().startswith(f"wh/analytics (127.0.0.1:{dead} as postgres): Connection refused")
