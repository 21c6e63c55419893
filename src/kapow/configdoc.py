"""docs/CONFIG.md, generated: every config key (walked from the structs of :mod:`kapow.config`) and every
``KAPOW_*`` environment variable the project reads (found by scanning ``src/``, ``scripts/``, ``tests/``,
``Makefile`` and ``.ci/``).

A reference written by hand drifted: the allowlists, ``allow_no_unique_key``, ``statement_timeout_ms``, the retry
and circuit keys and ``http.enabled`` were documented nowhere but the code (issue 18). Here the types and
defaults come from the structs themselves, and the meanings sit in :data:`KEYS` and :data:`ENVIRONMENT` below,
keyed by dotted path / name. ``tests/docs/test_config_doc.py`` fails when a key or a variable has no meaning here,
when a meaning names a key that is gone, or when docs/CONFIG.md differs from what this module writes.

    python -m kapow.configdoc            # rewrite docs/CONFIG.md (make docs)
    python -m kapow.configdoc --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import msgspec

from kapow.config import Config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CONFIG.md"

# What each key means, by dotted path; a list of tables is written `destinations[]`.
KEYS: dict[str, str] = {
    "kafka": "The broker, the topics to consume and the error topics.",
    "kafka.bootstrap_servers": "Broker address(es), `host:port[,host:port...]`.",
    "kafka.topics": "Topics to consume (at least one; not the error topics).",
    "kafka.group_id": "Consumer group: every writer process of one deployment uses the same one.",
    "kafka.user_errors_topic": "Where packets that are the client's fault go (docs/errors.md); created if missing.",
    "kafka.system_errors_topic": "The dead-letter queue: packets that failed on our side, after their retries; "
                                 "created if missing, with `<name>.done` beside it for handled records.",
    "kafka.settings": "Any librdkafka property (`\"security.protocol\" = \"SASL_SSL\"`, `sasl.*`, `ssl.*`, ...), "
                      "passed to the consumer and the producer; the admin client takes `security.*`, `sasl.*`, "
                      "`ssl.*` and `client.*` only. Quote keys that contain dots. A property that a typed key below "
                      "also sets is refused, and so are those that would break the commit guarantee: "
                      "`enable.auto.commit` or `enable.auto.offset.store` other than false, a `cooperative` "
                      "`partition.assignment.strategy`, a `group.protocol` other than `classic`.",
    "kafka.security_protocol": "`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL` (production: `SASL_SSL`); "
                               "needed by every typed key below (docs/SECURITY.md).",
    "kafka.sasl_mechanism": "`SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN` (others through `settings`); required "
                            "with a `SASL_*` protocol.",
    "kafka.sasl_username": "The SASL user; required with a `SASL_*` protocol.",
    "kafka.sasl_password_env": "Name of the environment variable that holds the SASL password (one of this and "
                               "`sasl_password_file`); never logged.",
    "kafka.sasl_password_file": "A file that holds the SASL password (a Kubernetes secret; a trailing line break "
                                "is ignored), checked at start and read whenever a Kafka client is made.",
    "kafka.ssl_ca_location": "The CA (PEM) that signs the brokers' certificates; librdkafka also checks that the "
                             "certificate names the host in `bootstrap_servers`.",
    "kafka.ssl_certificate_location": "A client certificate (PEM), for mutual TLS; with `ssl_key_location`.",
    "kafka.ssl_key_location": "Its private key (PEM).",
    "destinations[]": "One `[[destinations]]` table per PostgreSQL server, named by its vanity.",
    "destinations[].vanity": "The name clients write in a packet's `vanity`; unique.",
    "destinations[].databases": "The databases of this server that packets may name (at least one).",
    "destinations[].type": "The sink type; `postgres` is the only one today.",
    "destinations[].host": "Server host.",
    "destinations[].port": "Server port (1-65535).",
    "destinations[].user": "Role KaPoW connects as; it needs `INSERT` on the destination tables.",
    "destinations[].password_env": "Name of the environment variable that holds the password (must be set at "
                                   "start); the password itself never sits in the file and never reaches a log.",
    "destinations[].password_file": "Or a file that holds it (a Kubernetes secret; a trailing line break is "
                                    "ignored), read again for every new connection: a rotated password needs no "
                                    "restart.",
    "destinations[].sslmode": "libpq's `sslmode`: `disable`, `allow`, `prefer`, `require`, `verify-ca` or "
                              "`verify-full`; `verify-full` (the CA signs the certificate, issued for `host`) is the "
                              "production setting (docs/SECURITY.md).",
    "destinations[].sslrootcert": "The CA (PEM) that signs the server's certificate, or `system` for the OS's "
                                  "trusted roots; needed by `verify-ca` and `verify-full`.",
    "destinations[].sslcert": "A client certificate (PEM) for certificate authentication (its CN is the user); "
                              "with `sslkey`.",
    "destinations[].sslkey": "Its private key; libpq refuses one others may read (mode 0600, or 0640 owned by "
                             "root), checked at start.",
    "destinations[].max_connections": "Connections per database per writer process, at most: a burst is paced "
                                      "out, not passed on.",
    "destinations[].connect_timeout_s": "Seconds to wait for a connection to open.",
    "destinations[].statement_timeout_ms": "PostgreSQL `statement_timeout` of KaPoW's sessions; a statement "
                                           "past it is the system error `timeout`, charged to its table (held and "
                                           "retried alone, parked after `pipeline.hold_s`).",
    "destinations[].lock_timeout_ms": "PostgreSQL `lock_timeout` of KaPoW's sessions: a table locked by someone "
                                      "else fails its statement after this long, so it holds only itself while the "
                                      "other tables of the same transaction commit.",
    "destinations[].modes": "Write modes packets may ask for: `insert`, `upsert`, `delete` (default: insert and "
                            "upsert); another is the user error `forbidden_mode`.",
    "destinations[].allow_no_unique_key": "Accept tables without a primary key or unique constraint, and inserts "
                                          "that give none of a table's unique keys (a serial key, say) or give it "
                                          "as null: replays then duplicate rows; otherwise their packets are the "
                                          "user errors `no_unique_key` and `missing_key`.",
    "destinations[].schemas": "Allowlist of schemas packets may name; unset means any schema the user may write.",
    "destinations[].tables": "Allowlist of tables packets may name (`table` or `schema.table`); unset means any "
                             "table the user may write. Outside either list: the user error "
                             "`forbidden_destination`.",
    "routes[]": "One `[[routes]]` table per plain topic: its records need no envelope and no `context` header and "
                "all go to one table (docs/CONTRACT.md, routes). Consumed by the same group as `kafka.topics`.",
    "routes[].topic": "The topic (not one of `kafka.topics`, not an error topic).",
    "routes[].vanity": "The configured destination it writes to.",
    "routes[].database": "One of that destination's databases.",
    "routes[].schema": "The table's schema.",
    "routes[].table": "The table; it must have a primary key or unique constraint (checked at start and by "
                      "`kapow check`).",
    "routes[].format": "`json`: the value is the row (a tombstone deletes by the key when the route may delete). "
                       "`debezium`: a Debezium change event (create/read/update upsert `after`, delete deletes by "
                       "the key, tombstones skipped), with or without the JSON converter's schema.",
    "routes[].mode": "For `json`: `insert`, `upsert` or `delete` (one of the destination's `modes`).",
    "routes[].key": "Key columns to match upserts and deletes on, when the table has several unique constraints "
                    "(default: the primary key); a plain string or number record key of a tombstone is this one "
                    "column's value.",
    "routes[].version": "A column that must not move backwards: an upsert or delete applies only when the record's "
                        "value is at least the stored one.",
    "routes[].metadata": "Columns to fill from the record: `offset`, `partition`, `topic`, `timestamp`, `key`, and "
                         "for `debezium` the source's `lsn` and `ts_ms` (e.g. `{ lsn = \"src_lsn\" }`, a column a "
                         "`version` guard can use).",
    "pipeline": "Batching, limits, holding and retries, the circuit breaker and the automatic redrive.",
    "pipeline.batch_max_messages": "Most records consumed into one batch.",
    "pipeline.batch_spread_max_messages": "While a backlog spreads thin (a full batch has fewer than 8 rows per "
                                          "table, over 64 tables or more), batches double up to this many "
                                          "records (and a quarter of `max_buffer_bytes`), so that each table's "
                                          "statement carries more rows; a short batch returns to "
                                          "`batch_max_messages` at once. Set it to `batch_max_messages` to turn "
                                          "growth off.",
    "pipeline.batch_max_wait_ms": "At low rates, the longest a packet waits for company before its batch goes.",
    "pipeline.max_packet_bytes": "Largest record value accepted; larger is the user error `too_large`.",
    "pipeline.max_json_depth": "Deepest nesting accepted in `data`; deeper is the user error `bad_packet`.",
    "pipeline.max_destinations": "Most destinations in one packet; more is the user error `too_many_destinations`.",
    "pipeline.hold_s": "How long packets wait, in memory, while their table or database fails (locked, slow, "
                       "down) before they are parked on the system-errors topic; everything else keeps landing "
                       "meanwhile. An outage shorter than this parks nothing.",
    "pipeline.max_buffer_bytes": "Memory for packets consumed and not yet landed or parked, at most (each "
                                 "counts its value plus 1.5 kB for what its record holds besides): past it "
                                 "the consumer pauses, and what is held longest is parked early. Past half of "
                                 "it the writer waits for the database instead of reading ahead.",
    "pipeline.unit_max_rows": "Most rows written in one database transaction (many tables of one database share "
                              "one transaction and one round trip).",
    "pipeline.catalog_max_bytes": "Memory for the cached shapes of destination tables; the least recently used "
                                  "are evicted past it.",
    "pipeline.redrive": "Redrive parked packets automatically once their destination is healthy again (one writer "
                        "of the group, exactly once).",
    "pipeline.redrive_max_attempts": "A packet tried this many times stays parked for an operator (`kapow dlq`).",
    "pipeline.redrive_delay_s": "The least time between a packet's parking and its redrive.",
    "pipeline.redrive_rate": "Parked packets redriven per second, at most.",
    "pipeline.retry_initial_backoff_s": "First back-off between retries.",
    "pipeline.retry_max_backoff_s": "Longest back-off between retries.",
    "pipeline.circuit_failures_to_open": "Consecutive failures of a database (refused or lost connections, never a "
                                         "bad row or a locked table) that open its circuit.",
    "pipeline.circuit_open_s": "While a circuit is open the database is probed this often, with or without "
                               "traffic; the first success closes it.",
    "pipeline.catalog_ttl_s": "Seconds a table's cached catalog (columns, keys) is trusted before it is read "
                              "again; it is dropped sooner when the database says the table changed.",
    "pipeline.commit_stall_s": "`/healthz` fails (503, with the reason) once no commit was possible for this long "
                                "(0: `hold_s` + 2 x `shutdown_deadline_s` + 60 s, longer than the pipeline ever "
                                "waits on purpose): an error topic or the broker is stuck.",
    "pipeline.shutdown_deadline_s": "On SIGTERM/SIGINT, how long in-flight batches get to finish and commit.",
    "http": "The HTTP side: console, `/metrics`, `/healthz`, `/readyz`, the DLQ API (docs/OPERATIONS.md).",
    "http.enabled": "Serve it at all.",
    "http.listen": "`HOST:PORT` to listen on; anything but loopback needs `KAPOW_ADMIN_TOKEN` set.",
    "log": "Logging on stderr.",
    "log.level": "`DEBUG` adds a line per packet; `INFO` has one per batch and one per failed packet.",
    "log.format": "`json` (one object per line, for machines) or `text` (for a terminal). librdkafka's own lines "
                  "go through it too, rate-limited.",
}

# Every KAPOW_* variable read anywhere in the project, and what it does.
ENVIRONMENT: dict[str, str] = {
    "KAPOW_ADMIN_TOKEN": "`kapow run`: the admin token (named `admin`) for `/api`: every call, reschedule and "
                         "purge included. A token is needed to listen on anything but loopback. Never logged.",
    "KAPOW_ADMIN_TOKEN_FILE": "`kapow run`: a file holding the admin token, instead of `KAPOW_ADMIN_TOKEN`.",
    "KAPOW_READ_TOKEN": "`kapow run`: the read token (named `read`): every `GET /api/...`, never a reschedule or "
                        "purge (403).",
    "KAPOW_READ_TOKEN_FILE": "`kapow run`: a file holding the read token, instead of `KAPOW_READ_TOKEN`.",
    "KAPOW_TOKENS_FILE": "`kapow run`: a file of named tokens, one a line, `NAME ROLE TOKEN` (`read` or `admin`): "
                         "the log and `kapow_api_mutations_total` name who rescheduled or purged.",
    "KAPOW_SERVICES_TLS": "`scripts/services.sh`: `1` makes certificates (`.services/tls/`), turns TLS on in "
                          "PostgreSQL and adds a SASL_SSL (SCRAM-SHA-512) listener to Kafka (docs/SECURITY.md).",
    "KAPOW_IMAGE_TEST": "`podman` makes tests/integration/test_package.py build the image (Dockerfile, on a "
                        "debootstrap base) and run `kapow check` inside it; needs podman, runc and debootstrap.",
    "KAPOW_KAFKA_SASL_PORT": "`scripts/services.sh` with `KAPOW_SERVICES_TLS=1`: the port of Kafka's SASL_SSL "
                             "listener (default 9094).",
    "KAPOW_BOOTSTRAP": "Broker for `kapow send` and `kapow dlq` without `-b`/`-c`, for `kapow demo` (overrides "
                       "the config), the benchmark and the tests. Default `127.0.0.1:9092`.",
    "KAPOW_BROKER_WAIT_S": "`kapow run`: how long to wait for an unreachable broker at start before giving up "
                           "(default 60).",
    "KAPOW_KAFKA_PORT": "`scripts/services.sh` (`make services`): the port Kafka listens on (default 9092); "
                        "`kapow demo`, the tests, the benchmark and `scripts/connect.sh` then use `127.0.0.1:PORT` "
                        "unless `KAPOW_BOOTSTRAP` is set.",
    "KAPOW_KAFKA_CONTROLLER_PORT": "`scripts/services.sh`: the port of Kafka's KRaft controller (default 9093).",
    "KAPOW_PG_PORT": "`scripts/services.sh`: the port PostgreSQL listens on (default 5432); `kapow demo` and the "
                     "tests connect there.",
    "KAPOW_PG_HOST": "`kapow demo` and the tests: PostgreSQL host (default `127.0.0.1`).",
    "KAPOW_ADMIN_DSN": "The benchmark (`kapow bench`): libpq string of an admin connection that may create "
                       "databases (default `host=127.0.0.1 port=5432 user=postgres dbname=postgres`, with "
                       "`KAPOW_PG_HOST` and `KAPOW_PG_PORT` when set).",
    "KAPOW_SERVICES_DIR": "`scripts/services.sh` and the chaos suite: where the Kafka jars, PostgreSQL data and "
                          "logs live (default `.services/`).",
    "KAPOW_CHAOS": "`long` runs the long fault-injection scenarios (`make chaos`); `make test` runs the short ones.",
    "KAPOW_CHAOS_RESULTS": "The chaos suite appends one JSON line of numbers per scenario here.",
    "KAPOW_CHAOS_KAFKA_BASE_PORT": "The chaos suite's three-node cluster: first port to try (default: any free "
                                   "ports the system gives).",
    "KAPOW_AUDIT_SCREENSHOT": "The audit panel's browser test also saves a screenshot there.",
    "KAPOW_CDC_ROWS": "The CDC end-to-end test: rows in the snapshot (default 5,000; 100,000 for the long run).",
    "KAPOW_FUZZ_SEED": "The fuzz test's seed (a failure is reproduced with the seed it printed).",
    "KAPOW_CDC_FIXTURES": "The Debezium capture test saves the real change events it read there (unit-test "
                          "fixtures).",
    "KAPOW_CONNECT_DIR": "`scripts/connect.sh`: where the Kafka Connect worker keeps its state (default "
                         "`.services/connect/default`; `--state` overrides it).",
    "KAPOW_CONNECT_HEAP": "`scripts/connect.sh`: the Connect worker's Java heap (default 1g).",
    "KAPOW_CONNECT_LIBS": "`scripts/connect.sh`: where the Connect and Debezium jars are resolved to (default "
                          "`.services/connect-libs`).",
    "KAPOW_CONSOLE_SCREENSHOT": "The console test also saves a screenshot of the overview there (docs/console.png).",
    "KAPOW_CONSOLE_WARMUP_S": "The console test streams that many seconds first, so the charts have a history.",
}

# Names the scan finds that are not settings: values the tests invent to exercise `password_env`.
NOT_SETTINGS = frozenset({"KAPOW_NOPE_UNSET", "KAPOW_TEST_VAULT_PASSWORD", "KAPOW_TEST_WH_PASSWORD"})

_SCANNED = ("src", "scripts", "tests", "Makefile", ".ci")
_ENV_NAME = re.compile(r"\bKAPOW_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


def type_name(tp: Any) -> str:
    """A TOML-minded name for a field's type."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        if type(None) in args:
            rest = [a for a in args if a is not type(None)]
            return (type_name(rest[0]) if len(rest) == 1 else " or ".join(type_name(a) for a in rest)) + " (optional)"
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"table of {type_name(args[1])}"
    return {str: "string", int: "integer", float: "float", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.default is not msgspec.NODEFAULT:
        value = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    else:
        return "**required**"
    if value is None:
        return "unset"
    if isinstance(value, msgspec.Struct):
        return "(table)"
    return "`" + msgspec.json.encode(value).decode() + "`"


def _struct_of(tp: Any) -> tuple[type[msgspec.Struct] | None, bool]:
    """(the Struct a field holds, whether it is a list of them)."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp, False
    if get_origin(tp) is list:
        inner = get_args(tp)[0]
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            return inner, True
    return None, False


def sections(struct: type[msgspec.Struct] = Config, prefix: str = "") -> Iterator[tuple[str, str, list[tuple[
        str, msgspec.structs.FieldInfo]]]]:
    """(dotted path, TOML header, [(dotted key, field)]) for every table, depth first."""
    for field in msgspec.structs.fields(struct):
        inner, many = _struct_of(field.type)
        if inner is None:
            continue
        path = f"{prefix}{field.name}" + ("[]" if many else "")
        header = f"[[{prefix}{field.name}]]" if many else f"[{prefix}{field.name}]"
        rows = [(f"{path}.{f.name}", f) for f in msgspec.structs.fields(inner)]
        yield path, header, rows
        yield from sections(inner, f"{path}.")


def config_keys(struct: type[msgspec.Struct] = Config) -> list[str]:
    """Every dotted path the generator documents: tables and keys."""
    out: list[str] = []
    for path, _, rows in sections(struct):
        out.append(path)
        out.extend(key for key, field in rows if _struct_of(field.type)[0] is None)
    return out


def env_names(root: Path = ROOT) -> dict[str, list[str]]:
    """Every KAPOW_* name in the scanned files -> the files (relative) that mention it."""
    found: dict[str, set[str]] = {}
    for entry in _SCANNED:
        base = root / entry
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
        for path in files:
            if (path.suffix in (".pyc", ".png", ".jar") or path == Path(__file__)
                    or any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)):
                continue  # this module names every variable it documents: it would find them all
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for name in set(_ENV_NAME.findall(text)) - NOT_SETTINGS:
                found.setdefault(name, set()).add(str(path.relative_to(root)))
    return {name: sorted(paths) for name, paths in sorted(found.items())}


def render(root: Path = ROOT) -> str:
    out = ["# Configuration reference", "",
           "<!-- Generated by `python -m kapow.configdoc` (make docs) from the structs in src/kapow/config.py and",
           "     the meanings in src/kapow/configdoc.py: edit those, not this file. -->", "",
           "KaPoW reads one TOML file (`kapow run -c FILE`). Unknown keys, wrong types and missing required keys",
           "fail at start with one line naming the key. `examples/kapow.toml` is a working example (the demo's);",
           "[CONTRACT.md](CONTRACT.md) §6 has the minimum.", ""]
    for path, header, rows in sections():
        out += [f"## `{header}`", "", KEYS.get(path, ""), "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, field in rows:
            if _struct_of(field.type)[0] is not None:
                continue
            out.append(f"| `{field.name}` | {type_name(field.type)} | {_default(field)} | {KEYS.get(key, '')} |")
        out.append("")
    out += ["## Environment variables", "",
            "Every `KAPOW_*` variable the project reads (found in src/, scripts/, tests/, Makefile and .ci/). A",
            "destination's password comes from the variable its `password_env` names.", "",
            "| variable | meaning |", "|---|---|"]
    for name in env_names(root):
        out.append(f"| `{name}` | {ENVIRONMENT.get(name, '')} |")
    return "\n".join(out) + "\n"


def problems(root: Path = ROOT, struct: type[msgspec.Struct] = Config) -> list[str]:
    """What keeps the reference from being complete: keys or variables without a meaning, meanings of nothing."""
    keys, names = set(config_keys(struct)), set(env_names(root))
    out = [f"config key {k} has no meaning in kapow.configdoc.KEYS" for k in sorted(keys - set(KEYS))]
    out += [f"kapow.configdoc.KEYS documents {k}, which config.py no longer has" for k in sorted(set(KEYS) - keys)]
    out += [f"environment variable {n} has no meaning in kapow.configdoc.ENVIRONMENT" for n in sorted(names - set(
        ENVIRONMENT))]
    out += [f"kapow.configdoc.ENVIRONMENT documents {n}, which nothing reads any more" for n in sorted(set(
        ENVIRONMENT) - names)]
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    issues = problems()
    for issue in issues:
        print(f"configdoc: {issue}", file=sys.stderr)
    text = render()
    if "--check" in args:
        current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
        if current != text:
            print(f"configdoc: {DOC.relative_to(ROOT)} is out of date: run make docs", file=sys.stderr)
            return 1
        return 1 if issues else 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
