"""``kapow check``: is the config usable right now? The broker answers, each destination database accepts us, and
the role KaPoW connects as has every privilege the config will need, one line each.

A refusal is told apart from silence and said at once, in one line that names what to fix: a wrong SASL password
or a broker certificate that does not verify (:func:`kapow.kafka.clients.check_access`), a database certificate
not signed by ``sslrootcert`` or not issued for ``host``, a client certificate the server will not take, a wrong
password (:func:`connect_failure`).

Privileges are checked the way PostgreSQL will check them when the first packet lands, so that a missing grant is
found by an operator, not by a client's packet on the DLQ (docs/SECURITY.md has the SQL that grants them):
CONNECT on each database and TEMP (every KaPoW session creates its ``pg_temp.kapow_apply`` function), USAGE on
each allowlisted schema, and on each allowlisted or routed table INSERT, UPDATE for ``upsert``, DELETE for
``delete`` (as the server's ``modes`` allow), and SELECT for what they read: an upsert's ``ON CONFLICT ... DO
UPDATE SET c = EXCLUDED.c`` reads the key and every column it sets (PostgreSQL checks SELECT on each), a delete's
``WHERE`` the key columns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import make_conninfo

from kapow.config import Config, DestinationConfig
from kapow.credentials import SecretUnreadable
from kapow.errors import KapowError, one_line
from kapow.kafka.clients import admin_config, check_access

# How long `kapow check` gives the broker to answer; a refusal (authentication, TLS) is reported at once.
BROKER_WAIT_S = 10.0
MAX_LISTED = 5  # tables named in one line; the rest are counted

_PREFIX = re.compile(r'^(?:connection failed: )?(?:connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed: )?')


def check_config(config: Config) -> Iterator[tuple[str, bool]]:
    yield "config parsed", True
    yield from _check_kafka(config)
    for dest in config.destinations:
        for database in dest.databases:
            yield from check_database(config, dest, database)


def log_destination_problems(config: Config, logger: logging.Logger) -> int:
    """What :func:`check_database` finds wrong with each destination, one ERROR line each, for ``kapow run`` to
    call at start in a thread of its own: the writer opens a database only when a packet needs it, so a
    certificate that does not verify or a missing grant would otherwise first show as a parked packet. Never
    raises; returns how many lines it logged."""
    found = 0
    for dest in config.destinations:
        for database in dest.databases:
            try:
                for line, good in check_database(config, dest, database):
                    if not good:
                        logger.error("%s", line, extra={"fields": {"vanity": dest.vanity, "database": database}})
                        found += 1
            except Exception as exc:  # a check must never take the writer down
                logger.warning("checking %s/%s failed: %s", dest.vanity, database, one_line(exc))
    return found


def _check_kafka(config: Config) -> Iterator[tuple[str, bool]]:
    k = config.kafka
    how = f", {k.security_protocol}" if k.security_protocol else ""
    if k.sasl_username:
        how += f" as {k.sasl_username} ({k.sasl_mechanism})"
    try:
        brokers = check_access(k.bootstrap_servers, k.settings, timeout=BROKER_WAIT_S)
        meta = AdminClient(admin_config(k.bootstrap_servers, k.settings)).list_topics(timeout=10)
    except KapowError as exc:
        yield str(exc), False
        return
    except KafkaException as exc:
        yield f"Kafka at {k.bootstrap_servers}: {one_line(str(exc))}", False
        return
    yield f"Kafka at {k.bootstrap_servers} answers ({brokers} broker(s){how})", True
    for topic in k.topics:
        if topic in meta.topics:
            parts = len(meta.topics[topic].partitions)
            yield f"topic {topic} exists ({parts} partitions)", True
        else:
            yield f"topic {topic} does not exist yet (it is created on first publish if the broker allows)", True


def connect_failure(exc: BaseException, dest: DestinationConfig) -> str:
    """One line for a failed connection: libpq's reason without its preamble, and what to check when it is TLS or
    authentication. libpq writes one line per address tried; the first that is not a plain refusal is the news."""
    lines: list[str] = []
    for raw in str(exc).splitlines():
        if raw[:1].isspace() and lines:  # libpq's hint under its reason ("Is the server running on ...")
            lines[-1] = lines[-1].rstrip(".") + ". " + raw.strip()  # two sentences, read as two
        elif raw.strip() and not raw.startswith(("Multiple connection attempts", "- host")):
            lines.append(_PREFIX.sub("", raw.strip()).replace("FATAL:  ", ""))
    reason = next((line for line in lines if "Connection refused" not in line), lines[0] if lines else str(exc))
    reason = one_line(reason)
    lowered = reason.lower()
    if "does not match host name" in lowered:
        return f"TLS: {reason} (sslmode {dest.sslmode} checks the certificate is issued for host {dest.host!r})"
    if "certificate verify failed" in lowered:
        return (f"TLS: the server's certificate does not verify against sslrootcert {dest.sslrootcert or '(default)'}"
                f" ({reason})")
    if "root certificate file" in lowered:
        return f"TLS: {reason}"
    if "requires a valid client certificate" in lowered or "certificate authentication failed" in lowered:
        return f"{reason} (check sslcert/sslkey: the certificate's CN must be the user {dest.user!r})"
    if "alert unknown ca" in lowered or "alert bad certificate" in lowered or "alert certificate" in lowered:
        return f"TLS: the server refused our client certificate ({reason}; check sslcert)"
    if "server does not support ssl" in lowered:
        return f"TLS: {reason} (sslmode {dest.sslmode})"
    if "password authentication failed" in lowered:
        source = (f"password_file {dest.password_file}" if dest.password_file
                  else f"password_env {dest.password_env}" if dest.password_env else "no password configured")
        return f"{reason} ({source})"
    if "permission denied for database" in lowered:
        return f"{reason}: missing CONNECT (GRANT CONNECT ON DATABASE ... TO {dest.user})"
    return reason


def check_database(config: Config, dest: DestinationConfig, database: str) -> Iterator[tuple[str, bool]]:
    """Connect as KaPoW will (TLS, password), say how, then check the privileges the config needs."""
    where = f"{dest.vanity}/{database} ({dest.host}:{dest.port} as {dest.user})"
    try:
        pw = dest.password()
    except SecretUnreadable as exc:
        yield f"{where}: {exc}", False
        return
    try:
        conninfo = make_conninfo(dest.conninfo(database), **({"password": pw} if pw else {}))
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('server_version'), (SELECT version FROM pg_stat_ssl WHERE "
                               "pid = pg_backend_pid() AND ssl)").fetchone()
            version, tls = (row[0], row[1]) if row else ("?", None)
            via = f"{tls}, sslmode {dest.sslmode}" if tls else f"no TLS, sslmode {dest.sslmode}"
            yield f"{where}: PostgreSQL {version} ({via}); modes allowed: {', '.join(dest.modes)}", True
            for line, good in privilege_problems(conn, config, dest, database):
                yield f"{where}: {line}", good
    except psycopg.Error as exc:
        yield f"{where}: {connect_failure(exc, dest)}", False


@dataclass(frozen=True, slots=True)
class _Target:
    """A table the config names (allowlist or route), or a whole allowlisted schema (``table`` None)."""

    schema: str | None  # None: a plain table name, in any schema the user may write
    table: str | None


_TABLE_SQL = """
SELECT n.nspname, c.relname, has_schema_privilege(n.oid, 'USAGE'),
       has_table_privilege(c.oid, 'INSERT'), has_table_privilege(c.oid, 'UPDATE'),
       has_table_privilege(c.oid, 'DELETE'),
       coalesce((SELECT bool_and(has_column_privilege(c.oid, k.attnum, 'SELECT'))
                 FROM pg_index i, unnest(i.indkey) AS k(attnum)
                 WHERE i.indrelid = c.oid AND i.indisunique AND k.attnum > 0
                   AND i.indexrelid = (SELECT i2.indexrelid FROM pg_index i2
                                       WHERE i2.indrelid = c.oid AND i2.indisunique AND i2.indpred IS NULL
                                       ORDER BY i2.indisprimary DESC, i2.indexrelid LIMIT 1)), true),
       coalesce((SELECT bool_and(has_column_privilege(c.oid, a.attnum, 'SELECT')) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), true)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%%'
  AND (%(schema)s::text IS NULL OR n.nspname = %(schema)s) AND (%(table)s::text IS NULL OR c.relname = %(table)s)
ORDER BY 1, 2
"""


def _targets(config: Config, dest: DestinationConfig, database: str) -> list[_Target]:
    out: list[_Target] = []
    for name in dest.tables or []:
        schema, dot, table = name.rpartition(".")
        if dot:
            out.append(_Target(schema, table))
        else:
            out += [_Target(s, name) for s in dest.schemas] if dest.schemas else [_Target(None, name)]
    if dest.tables is None:
        out += [_Target(s, None) for s in dest.schemas or []]
    out += [_Target(r.schema, r.table) for r in config.routes
            if r.vanity == dest.vanity and r.database == database]
    return list(dict.fromkeys(out))


def _needed(dest: DestinationConfig) -> list[str]:
    need = []
    if "insert" in dest.modes or "upsert" in dest.modes:
        need.append("INSERT")
    if "upsert" in dest.modes:
        need.append("UPDATE")
    if "delete" in dest.modes:
        need.append("DELETE")
    if "upsert" in dest.modes:  # ON CONFLICT reads the key, and EXCLUDED.<column> for every column it sets
        need.append("SELECT")
    elif "delete" in dest.modes:  # the WHERE reads the key
        need.append("SELECT on the key columns")
    return need


def privilege_problems(conn: psycopg.Connection[tuple[object, ...]], config: Config, dest: DestinationConfig,
                       database: str) -> Iterator[tuple[str, bool]]:
    """(line, good) for the database-wide privileges, then one line per allowlisted schema or table."""
    row = conn.execute("SELECT has_database_privilege(current_database(), 'CONNECT'), "
                       "has_database_privilege(current_database(), 'TEMP')").fetchone()
    connect, temp = row if row else (False, False)
    if not connect:  # connected all the same: a superuser, or a grant revoked since; the next connection fails
        yield f"missing CONNECT on database {database} (GRANT CONNECT ON DATABASE ... TO {dest.user})", False
    if not temp:
        yield (f"missing TEMP on database {database}: every KaPoW session creates a function in pg_temp "
               f"(GRANT TEMP ON DATABASE ... TO {dest.user})"), False
    need = _needed(dest)
    for target in _targets(config, dest, database):
        label = f"{target.schema or '*'}.{target.table}" if target.table else f"schema {target.schema}"
        if target.schema is not None:
            found = conn.execute("SELECT has_schema_privilege(n.oid, 'USAGE') FROM pg_namespace n WHERE "
                                 "n.nspname = %s", (target.schema,)).fetchone()
            if found is None:
                yield f"{label}: schema {target.schema} does not exist", False
                continue
            if not found[0]:
                yield f"{label}: missing USAGE on schema {target.schema}", False
                continue
        rows = conn.execute(_TABLE_SQL, {"schema": target.schema, "table": target.table}).fetchall()
        if not rows:
            yield f"{label}: {'no such table' if target.table else 'no tables yet'}", target.table is None
            continue
        missing = []
        for schema, table, in_schema, insert, update, delete, key_select, all_select in rows:
            lacks = [p for p, has in (("INSERT", insert), ("UPDATE", update), ("DELETE", delete),
                                      ("SELECT on the key columns", key_select), ("SELECT", all_select))
                     if p in need and not has]
            if not in_schema:
                lacks.insert(0, f"USAGE on schema {schema}")
            if lacks:
                missing.append(f"{schema}.{table} lacks {', '.join(lacks)}")
        if missing:
            more = f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
            yield f"{label}: {'; '.join(missing[:MAX_LISTED])}{more}", False
        else:
            tables = f"{len(rows)} table(s)" if target.table is None else "table"
            yield f"{label}: {tables} with {', '.join(need)} ({', '.join(dest.modes)})", True
