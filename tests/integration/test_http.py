"""Issue #4: the writer's HTTP side, against a real writer process, broker and database.

Fuzzed from its own OpenAPI document (schemathesis: no 5xx anywhere, responses as documented, auth enforced),
once per role (issue 13: a read token and an admin token), plus the cases a fuzzer cannot judge: the token gate
and each role on every endpoint of the document, mutations logged with who and counted, the refusal to listen in
the open without a token, no secret in the logs, readiness, and the DLQ API's semantics (those of ``kapow dlq``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from kapow.contract import make_packet
from kapow.http.openapi import openapi_document
from tests.browser import harness
from tests.integration import kit

pytestmark = pytest.mark.integration
http_writers = harness.http_writers  # the fixture

TOKEN = f"tok-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_TOKEN = f"read-{uuid.uuid4().hex}"
READ_AUTH = {"Authorization": f"Bearer {READ_TOKEN}"}
ROLES = {"admin": AUTH, "read": READ_AUTH}
DDL = "CREATE TABLE public.events (id bigint PRIMARY KEY, v text NOT NULL)"


def parked_world(env: kit.Env, n_parked: int, n_user_errors: int = 0) -> None:
    """The env's database has ``events``; a second destination "vault" refuses connections; publish ``n_parked``
    packets to it (they park on system errors) and ``n_user_errors`` bad ones."""
    db = env.databases[0]
    kit.sql(db, DDL)
    env.extra_destinations = [{"vanity": "vault", "host": "127.0.0.1", "port": harness.dead_port(),
                               "databases": [db], "connect_timeout_s": 1}]
    env.pipeline = {"redrive": False, "hold_s": 0.3, "retry_initial_backoff_s": 0.05}
    values = [make_packet([kit.dest(db, "events", vanity="vault")], {"id": i, "v": "parked"}) for i in range(n_parked)]
    values += [make_packet([kit.dest(db, "events")], {"id": i, "v": "x", "nope": 1}) for i in range(n_user_errors)]
    kit.publish(env.topic, values)


# ---------------------------------------------------------------------------------------------- the fuzzer
@pytest.fixture(scope="module")
def fuzz_writer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.HttpWriter]:
    tmp = tmp_path_factory.mktemp("fuzz")
    base = kit.uid("kf")
    env = kit.Env(topic=f"{base}.in", group=f"{base}.group", user_errors=f"{base}.user",
                  system_errors=f"{base}.system", databases=[kit.uid("kdb")], tmp=tmp)
    kit.create_topic(env.topic, 3)
    kit.create_database(env.databases[0])
    port = harness.free_port()
    writer = None
    try:
        parked_world(env, n_parked=4, n_user_errors=2)
        writer = harness.HttpWriter(harness.http_config(env, port), tmp, port,
                                    environ={"KAPOW_ADMIN_TOKEN": TOKEN, "KAPOW_READ_TOKEN": READ_TOKEN})
        writer.wait_ready(headers=AUTH)
        kit.wait_for(lambda: len(kit.read_all(env.system_errors)) >= 4, 60, "4 parked records")
        yield writer
    finally:
        if writer is not None:
            writer.close()
        kit.drop_database(env.databases[0])
        kit.remove_topics([env.topic, env.user_errors, env.system_errors, f"{env.system_errors}.done"])


# The document the writer serves (checked equal below); loaded here so that each operation is its own test.
# (schemathesis' fixture-based loader does not run on pytest 9.) Mutations are fuzzed, not swept by the coverage
# phase: each one is a fresh read of the queue plus acknowledged produces (about a second), and the sweep of
# every boundary of the body would take minutes.
schema = schemathesis.openapi.from_dict(openapi_document(), config=SchemathesisConfig.from_dict(
    {"operations": [{"include-method": "POST", "phases": {"coverage": {"enabled": False}}}]}))


@pytest.mark.parametrize("role", ["read", "admin"])  # read first: the admin run may purge what the read run reads
@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_fuzz_no_5xx_and_as_documented(case: Any, fuzz_writer: harness.HttpWriter, role: str) -> None:
    response = case.call_and_validate(base_url=fuzz_writer.url, headers=ROLES[role], timeout=30)
    needs = case.operation.definition.raw.get("x-kapow-role")
    if needs == "admin" and role == "read":  # a read token never changes anything, whatever it sends (401: the
        assert response.status_code in (401, 403), (case.method, case.path, response.status_code)  # fuzzed header)


def test_openapi_document_is_valid_openapi_3(fuzz_writer: harness.HttpWriter) -> None:
    doc = httpx.get(f"{fuzz_writer.url}/openapi.json", timeout=10).json()
    assert doc == openapi_document()
    assert doc["openapi"].startswith("3.")
    loaded = schemathesis.openapi.from_dict(doc)  # validates the document against the OpenAPI 3 meta-schema
    operations = {f"{op.method.upper()} {op.path}" for op in (r.ok() for r in loaded.get_all_operations())}
    for expected in ("GET /api/dlq", "GET /api/dlq/{id}", "POST /api/dlq/{id}/reschedule", "POST /api/dlq/purge",
                     "GET /api/user-errors", "GET /api/stats", "GET /api/audit", "GET /readyz", "GET /metrics"):
        assert expected in operations


# ---------------------------------------------------------------------------------------------- auth
MUTATIONS = [("POST", "/api/dlq/0:0/reschedule", None), ("POST", "/api/dlq/0:0/purge", None),
             ("POST", "/api/dlq/reschedule", {"all": True}), ("POST", "/api/dlq/purge", {"all": True})]
READS = ["/api/dlq", "/api/dlq/0:0", "/api/user-errors", "/api/stats", "/api/audit"]


def test_token_gate(fuzz_writer: harness.HttpWriter) -> None:
    url = fuzz_writer.url
    before = harness.get_json(url, "/api/dlq", TOKEN)["parked"]
    for method, path, body in MUTATIONS:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=10)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "unauthorized" in r.json()["error"]
    for path in READS:
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 401
    assert harness.get_json(url, "/api/dlq", TOKEN)["parked"] == before  # nothing was purged on the way
    # operations endpoints stay open to the scraper and the orchestrator
    for path in ("/metrics", "/healthz", "/readyz", "/openapi.json", "/"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path


def concrete(path: str) -> str:
    return path.replace("{id}", "0:0")


def test_each_role_on_every_endpoint_of_the_document(fuzz_writer: harness.HttpWriter) -> None:
    """Every /api operation the OpenAPI document lists, with no token, a wrong one, the read and the admin token:
    a new endpoint is covered the day it is documented (and must say which role it needs)."""
    url = fuzz_writer.url
    operations = [(method.upper(), path, op) for path, ops in openapi_document()["paths"].items()
                  if path.startswith("/api") for method, op in ops.items()]
    assert len(operations) >= 9 and {op["x-kapow-role"] for _, _, op in operations} == {"read", "admin"}
    before = harness.get_json(url, "/api/dlq", TOKEN)["parked"]
    for method, path, op in operations:
        body = {"code": "no-such-code"} if method == "POST" and "{id}" not in path else None  # matches nothing
        for headers in ({}, {"Authorization": f"Bearer {READ_TOKEN}x"}, {"Authorization": READ_TOKEN}):
            r = httpx.request(method, f"{url}{concrete(path)}", json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (method, path, headers, r.status_code)
        r = httpx.request(method, f"{url}{concrete(path)}", json=body, headers=READ_AUTH, timeout=60)
        if op["x-kapow-role"] == "admin":
            assert r.status_code == 403 and "may read, not reschedule or purge" in r.json()["error"], (path, r.text)
        else:
            assert r.status_code in (200, 404, 409), (method, path, r.status_code, r.text)
        r = httpx.request(method, f"{url}{concrete(path)}", json=body, headers=AUTH, timeout=60)
        assert r.status_code in (200, 404, 409), (method, path, r.status_code, r.text)
        assert str(r.status_code) in op["responses"], (method, path, r.status_code)
    assert harness.get_json(url, "/api/dlq", READ_TOKEN)["parked"] == before  # no read call changed anything


def test_user_caused_errors_are_4xx_json_one_line(fuzz_writer: harness.HttpWriter) -> None:
    url = fuzz_writer.url
    cases: list[tuple[str, str, Any, int]] = [
        ("GET", "/api/dlq?limit=0", None, 400), ("GET", "/api/dlq?limit=abc", None, 400),
        ("GET", "/api/dlq?since=yesterday", None, 400), ("GET", "/api/dlq?offset=-1", None, 400),
        ("GET", "/api/dlq/not-an-id", None, 404), ("GET", "/api/dlq/purge", None, 405),
        ("GET", "/api/dlq/0:999999", None, 404),
        ("POST", "/api/dlq/0:999999/purge", None, 404), ("POST", "/api/dlq/purge", {}, 400),
        ("POST", "/api/dlq/purge", {"ids": ["zz"]}, 400), ("POST", "/api/dlq/purge", {"bogus": 1}, 400),
        ("POST", "/api/dlq/reschedule", [1, 2], 400), ("POST", "/api/dlq/reschedule", {"ids": ["0:999999"]}, 404),
        ("GET", "/api/user-errors?limit=201", None, 400), ("GET", "/api/stats?seconds=0", None, 400),
        ("GET", "/api/dlq?after=nope", None, 400), ("GET", "/api/dlq?after=0:999999", None, 404),
        ("GET", "/api/audit?topic=nope", None, 404), ("GET", "/api/audit?from_offsets=0-5", None, 400),
        ("GET", "/api/audit?from_offsets=99:0", None, 404), ("GET", "/api/audit?examples=101", None, 400),
        ("GET", "/nowhere", None, 404), ("DELETE", "/api/dlq", None, 405), ("GET", "/console/../../etc", None, 404),
    ]
    for method, path, body, status in cases:
        r = httpx.request(method, f"{url}{path}", json=body, headers=AUTH, timeout=10)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        error = r.json()["error"]
        assert error and "\n" not in error, (path, error)
    r = httpx.post(f"{url}/api/dlq/purge", content=b"{not json", headers=AUTH, timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]


# ---------------------------------------------------------------------------------------------- DLQ semantics
def test_dlq_api_list_filter_show_reschedule_purge(make_env: Callable[..., kit.Env],
                                                   http_writers: harness.Starter) -> None:
    env = make_env(partitions=3)
    db = env.databases[0]
    parked_world(env, n_parked=5, n_user_errors=3)
    big = make_packet([kit.dest(db, "events")], {"id": 77, "v": "x" * 100_000, "nope": 1})
    kit.publish(env.topic, [big])  # a 100 kB user error: the API shows its first 16 KiB and says so
    port = harness.free_port()
    writer = http_writers(harness.http_config(env, port), port)
    writer.wait_ready()
    url = writer.url
    kit.wait_for(lambda: harness.get_json(url, "/api/dlq")["parked"] == 5, 60, "5 parked records")

    listing = harness.get_json(url, "/api/dlq")
    assert listing["topic"] == env.system_errors and listing["total"] == 5
    assert listing["facets"]["codes"] == {"database_unavailable": 5}
    assert listing["facets"]["destinations"] == {f"vault/{db}/public.events": 5}
    stamps = [r["failed_at_ms"] for r in listing["records"]]
    assert listing["order"] == "oldest first" and stamps == sorted(stamps)  # one order: the CLI's
    assert all(r["destination_label"] == f"vault/{db}/public.events" for r in listing["records"])
    assert all(r["destination"]["vanity"] == "vault" and r["source"]["topic"] == env.topic
               for r in listing["records"])
    page = harness.get_json(url, "/api/dlq", limit=2, offset=2)
    assert [r["id"] for r in page["records"]] == [r["id"] for r in listing["records"][2:4]]
    first_page = harness.get_json(url, "/api/dlq", limit=2)  # the cursor: each page continues the last
    assert first_page["next_after"] == listing["records"][1]["id"]
    second_page = harness.get_json(url, "/api/dlq", limit=2, after=first_page["next_after"])
    assert [r["id"] for r in second_page["records"]] == [r["id"] for r in listing["records"][2:4]]
    last_page = harness.get_json(url, "/api/dlq", limit=2, after=second_page["next_after"])
    assert [r["id"] for r in last_page["records"]] == [listing["records"][4]["id"]]
    assert last_page["next_after"] is None
    assert harness.get_json(url, "/api/dlq", code="timeout")["total"] == 0
    assert harness.get_json(url, "/api/dlq", destination="vault/")["total"] == 5
    assert harness.get_json(url, "/api/dlq", since="1h")["total"] == 5
    assert harness.get_json(url, "/api/dlq", until="2000-01-01T00:00:00Z")["total"] == 0

    first, second = listing["records"][0]["id"], listing["records"][1]["id"]
    shown = harness.get_json(url, f"/api/dlq/{first}")
    assert shown["id"] == first and shown["headers"]["kapow-error-code"] == "database_unavailable"
    assert shown["truncated"] is False and shown["size"] == len(shown["value"])
    assert listing["records"][0]["value_preview"] == shown["value"][:240]
    assert '"v":"parked"' in shown["value"].replace(" ", "")

    r = httpx.post(f"{url}/api/dlq/{first}/purge", timeout=30)
    assert r.status_code == 200 and r.json() == {"action": "purged", "count": 1, "ids": [first]}
    assert httpx.get(f"{url}/api/dlq/{first}", timeout=10).status_code == 404
    assert httpx.post(f"{url}/api/dlq/{first}/purge", timeout=10).status_code == 404  # handled once

    original = harness.get_json(url, f"/api/dlq/{second}")
    before = len(kit.read_all(env.topic))
    r = httpx.post(f"{url}/api/dlq/reschedule", json={"ids": [second]}, timeout=30)
    assert r.status_code == 200 and r.json() == {"action": "rescheduled", "count": 1, "ids": [second]}
    republished = kit.read_all(env.topic, expect=before + 1)
    assert len(republished) == before + 1
    again = [rec for rec in republished if "kapow-attempt" in rec.headers]
    assert len(again) == 1  # the original key, value and headers, with the attempt count carried forward
    assert again[0].headers["kapow-attempt"] == str(original["attempt"] + 1).encode()
    assert again[0].value == original["value"].encode() and again[0].key == original["key"].encode()
    assert again[0].headers["context"] == original["headers"]["context"].encode()

    # the rescheduled copy meets the same dead database and parks again: wait for it, so the queue is still
    # while the CLI and the API are compared (else the copy can land between the two reads)
    kit.wait_for(lambda: harness.get_json(url, "/api/dlq")["total"] == 4, 60, "the rescheduled copy re-parked")
    # the CLI sees the same queue state, in the same order, with the same destination label (pasteable)
    out = subprocess.run([sys.executable, "-m", "kapow", "dlq", "list", "--json", "-c", str(writer.config)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    cli = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in cli] == [r["id"] for r in harness.get_json(url, "/api/dlq")["records"]]
    assert first not in {r["id"] for r in cli} and second not in {r["id"] for r in cli}
    label = cli[0]["destination_label"]
    out = subprocess.run([sys.executable, "-m", "kapow", "dlq", "list", "--json", "-c", str(writer.config),
                          "--destination", label], capture_output=True, text=True, timeout=60, check=True).stdout
    assert {r["id"] for r in cli} == {json.loads(line)["id"] for line in out.splitlines()}
    out = subprocess.run([sys.executable, "-m", "kapow", "dlq", "list", "--json", "-c", str(writer.config),
                          "--destination", f"wh/{db}/"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out == ""

    # user errors are listed, newest first, and read-only
    ue = harness.get_json(url, "/api/user-errors")
    assert ue["total"] == 4 and {r["code"] for r in ue["records"]} == {"unknown_column"}
    cut = [r for r in ue["records"] if r["truncated"]]
    assert len(cut) == 1 and cut[0]["size"] == len(big) and len(cut[0]["value"]) == 16 * 1024
    assert all(r["size"] == len(r["value"]) for r in ue["records"] if not r["truncated"])
    assert harness.get_json(url, "/api/user-errors", limit=2)["records"] == ue["records"][:2]  # newest first
    stamps = [r["failed_at_ms"] for r in ue["records"]]
    assert stamps == sorted(stamps, reverse=True)
    assert httpx.post(f"{url}/api/user-errors", timeout=10).status_code == 405

    # the audit, over HTTP and from the CLI: the same answer (the rescheduled copy parks again: vault is down)
    kit.wait_for(lambda: harness.get_json(url, "/api/dlq")["parked"] == 4, 60, "the rescheduled copy parked again")
    kit.wait_for(lambda: harness.get_json(url, "/api/audit")["pending"] == 0, 60, "the copy committed")
    api_audit = harness.get_json(url, "/api/audit", examples=5)
    done = subprocess.run([sys.executable, "-m", "kapow", "audit", "--json", "-c", str(writer.config)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    keys = ("total", "filtered", "landed", "user_errors", "parked", "purged", "pending", "missing")
    assert {k: api_audit[k] for k in keys} == {k: json.loads(done.stdout)[k] for k in keys} == {
        "total": 10, "filtered": 0, "landed": 0, "user_errors": 4, "parked": 5, "purged": 1, "pending": 0,
        "missing": 0}
    assert sum(p["total"] for p in api_audit["partitions"]) == 10 and api_audit["missing_examples"] == []
    assert writer.stop() == 0


def test_mutations_are_logged_with_who_and_counted(make_env: Callable[..., kit.Env], http_writers: harness.Starter,
                                                  tmp_path: Path) -> None:
    """Named tokens from a file: each reschedule and purge is one log line with the token's name, the action, the
    selection and how many, and one more in kapow_api_mutations_total{action, token}; a read token is refused."""
    env = make_env()
    parked_world(env, n_parked=3)
    alice, grafana = f"alice-{uuid.uuid4().hex}", f"grafana-{uuid.uuid4().hex}"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# name role token\nalice admin {alice}\ngrafana read {grafana}\n")
    port = harness.free_port()
    writer = http_writers(harness.http_config(env, port), port,
                          environ={"KAPOW_TOKENS_FILE": str(tokens), "KAPOW_ADMIN_TOKEN": TOKEN})
    writer.wait_ready(headers=AUTH)
    url = writer.url
    kit.wait_for(lambda: harness.get_json(url, "/api/dlq", grafana)["parked"] == 3, 60, "3 parked records")
    ids = [r["id"] for r in harness.get_json(url, "/api/dlq", grafana)["records"]]

    def counted(action: str, token: str) -> float:
        return harness.value(harness.metrics(url), "kapow_api_mutations_total", action=action, token=token)

    r = httpx.post(f"{url}/api/dlq/purge", json={"all": True}, headers={"Authorization": f"Bearer {grafana}"},
                   timeout=30)
    assert r.status_code == 403
    r = httpx.post(f"{url}/api/dlq/{ids[0]}/purge", headers={"Authorization": f"Bearer {alice}"}, timeout=30)
    assert r.status_code == 200 and r.json()["count"] == 1
    r = httpx.post(f"{url}/api/dlq/reschedule", json={"ids": [ids[1]]}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["count"] == 1
    r = httpx.post(f"{url}/api/dlq/{ids[0]}/purge", headers={"Authorization": f"Bearer {alice}"}, timeout=30)
    assert r.status_code == 404  # handled once; refused, logged, not counted
    assert counted("purge", "alice") == 1 and counted("reschedule", "admin") == 1
    assert counted("purge", "grafana") == 0 and counted("purge", "admin") == 0
    assert writer.stop() == 0
    lines = [json.loads(line) for line in writer.log().splitlines() if line.startswith("{")]
    done = [(line["who"], line["action"], line["count"]) for line in lines if line.get("logger") == "kapow.http.dlq"
            and "count" in line]
    assert done == [("alice", "purge", 1), ("admin", "reschedule", 1)], done
    assert any(line.get("who") == "alice" and "refused" in line["msg"] for line in lines)
    assert any(line.get("who") == "grafana" and "refused to the read token grafana" in line["msg"] for line in lines)
    log = writer.log()
    assert alice not in log and grafana not in log and TOKEN not in log


# ---------------------------------------------------------------------------------------------- start-up rules
def run_briefly(config: Path, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAPOW_ADMIN_TOKEN"}
    return subprocess.run([sys.executable, "-m", "kapow", "run", "-c", str(config)], capture_output=True, text=True,
                          timeout=60, env={**env, **(environ or {})}, check=False)


def test_refuses_an_open_listen_address_without_a_token(tmp_path: Path) -> None:
    env = kit.Env(topic="unused", group="unused", user_errors="u.user", system_errors="u.system",
                  databases=["unused"], tmp=tmp_path)
    config = tmp_path / "open.toml"
    listen = f"0.0.0.0:{harness.free_port()}"
    config.write_text(env.config_text().replace("[http]\nenabled = false", f'[http]\nlisten = "{listen}"'))
    done = run_briefly(config)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "KAPOW_ADMIN_TOKEN" in done.stderr and "0.0.0.0" in done.stderr

    with socket.socket() as taken:  # a port already in use: one line too
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        config.write_text(env.config_text().replace("[http]\nenabled = false", f'[http]\nlisten = "127.0.0.1:{busy}"'))
        done = run_briefly(config)
    assert done.returncode != 0 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"127.0.0.1:{busy}" in done.stderr


def test_readyz_is_503_without_partitions_and_healthz_is_200(make_env: Callable[..., kit.Env],
                                                           http_writers: harness.Starter) -> None:
    env = make_env()
    env.topic = kit.uid("never_created")  # subscribed, but there is nothing to assign
    port = harness.free_port()
    writer = http_writers(harness.http_config(env, port), port)
    kit.wait_for(lambda: "writer started" in writer.log(), 30, "the writer to start")
    kit.wait_for(lambda: httpx.get(f"{writer.url}/healthz", timeout=5).status_code == 200, 30, "healthz")
    for _ in range(3):
        r = httpx.get(f"{writer.url}/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["ready"] is False and r.json()["partitions"] == 0
    assert [d["circuit"] for d in r.json()["destinations"]] == ["closed"]
    assert writer.stop() == 0


# ---------------------------------------------------------------------------------------------- secrets
def test_no_secret_is_ever_logged(make_env: Callable[..., kit.Env], http_writers: harness.Starter) -> None:
    """Token and database password stay out of the logs, at DEBUG, through auth failures, DLQ operations and a
    dead destination's connection errors."""
    env = make_env()
    password = f"pw-{uuid.uuid4().hex}"
    parked_world(env, n_parked=2, n_user_errors=1)
    env.extra_destinations[0]["password_env"] = "KAPOW_TEST_VAULT_PASSWORD"
    port = harness.free_port()
    config = harness.http_config(env, port, log_level="DEBUG").replace(
        'user = "postgres"\n', 'user = "postgres"\npassword_env = "KAPOW_TEST_WH_PASSWORD"\n', 1)
    writer = http_writers(config, port, environ={"KAPOW_ADMIN_TOKEN": TOKEN, "KAPOW_TEST_WH_PASSWORD": password,
                                                 "KAPOW_TEST_VAULT_PASSWORD": password})
    writer.wait_ready(headers=AUTH)
    url = writer.url
    kit.wait_for(lambda: harness.get_json(url, "/api/dlq", TOKEN)["parked"] == 2, 60, "2 parked records")
    for headers in ({"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}, {}):
        assert httpx.post(f"{url}/api/dlq/purge", json={"all": True}, headers=headers, timeout=10).status_code == 401
    rid = harness.get_json(url, "/api/dlq", TOKEN)["records"][0]["id"]
    assert httpx.post(f"{url}/api/dlq/{rid}/reschedule", headers=AUTH, timeout=30).status_code == 200
    kit.wait_for(lambda: harness.get_json(url, "/api/dlq", TOKEN)["parked"] == 2, 60, "the record parked again")
    harness.get_json(url, "/api/user-errors", TOKEN)
    harness.get_json(url, "/api/stats", TOKEN)
    assert writer.stop() == 0
    log = writer.log()
    assert "parking" in log or "database_unavailable" in log  # the dead destination's errors were logged
    assert '"level": "debug"' in log
    assert TOKEN not in log and password not in log
