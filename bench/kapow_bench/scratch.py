"""The scratch world of one run: fresh databases, tables, topics and consumer group, all removed afterwards.

Runs never see each other's rows, offsets or catalog, and nothing is left behind on the shared broker and server:
the names carry a random tag (``kb_1a2b3c4d``), and :meth:`Scratch.drop` removes them even when the run failed.
``D`` databases hold ``T`` tables (table ``t`` in database ``t mod D``); the writer's config has ONE
``[[destinations]]`` entry naming all ``D`` databases, as a company-wide pipeline would.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from typing import Any

import psycopg
from psycopg import sql

from kapow_bench.env import BOOTSTRAP, admin_connection, connect, pg_location
from kapow_bench.shapes import CLOCK_DDL, CLOCK_TRIGGER, Shape
from kapow_bench.spec import Spec
from kapow_bench.workload import VANITY, TableRef

DDL_CHUNK = 500  # CREATE TABLEs sent in one round trip


class Scratch:
    """Names first (``tables``, ``topic``…), then :meth:`create`; a context manager that always drops."""

    def __init__(self, spec: Spec, *, partitions: int, tag: str = "kb") -> None:
        self.spec = spec
        self.base = f"{tag}_{uuid.uuid4().hex[:8]}"
        self.databases = [self.base] if spec.databases == 1 else [f"{self.base}_{j}" for j in range(spec.databases)]
        stem = "bench_ids" if spec.size == 12 else "bench_events"
        self.tables = [TableRef(self.databases[0], stem)] if spec.tables == 1 else [
            TableRef(self.databases[t % spec.databases], f"{stem}_{t:05d}") for t in range(spec.tables)]
        self.topic = f"{self.base}.in"
        self.user_errors = f"{self.base}.user"
        self.system_errors = f"{self.base}.system"
        self.group = f"{self.base}.group"
        self.partitions = partitions
        self._made_dbs: list[str] = []
        self._made_topics = False

    def create(self, shape: Shape) -> Scratch:
        """The databases and tables (with the statement clock when the spec needs it), then the topics."""
        from kapow.kafka.clients import ensure_topics

        with admin_connection() as conn:
            for db in self.databases:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
                self._made_dbs.append(db)
        index = {t.name: n for n, t in enumerate(self.tables)}
        for db in self.databases:
            names = [t.name for t in self.tables if t.database == db]
            with connect(db) as conn:
                if not self.spec.stamps_rows:
                    conn.execute(CLOCK_DDL.encode())
                for i in range(0, len(names), DDL_CHUNK):
                    ddl = [shape.create(name) for name in names[i:i + DDL_CHUNK]]
                    ddl += [f'ALTER TABLE "{name}" ADD COLUMN "{tag}" text' for name in names[i:i + DDL_CHUNK]
                            if (tag := self.spec.tag_column(index[name])) is not None]
                    if not self.spec.stamps_rows:
                        ddl += [CLOCK_TRIGGER.format(table=name) for name in names[i:i + DDL_CHUNK]]
                    conn.execute(";\n".join(ddl).encode())
        ensure_topics(BOOTSTRAP, {self.topic: self.partitions, self.user_errors: 1, self.system_errors: 1})
        self._made_topics = True
        return self

    def config(self, *, batch: int, connections: int) -> str:
        """The writer's TOML: defaults except what the run varies; HTTP off so parallel writers never clash."""
        host, port, user = pg_location()
        spec = self.spec
        modes = '["insert", "upsert", "delete"]' if spec.mode == "delete" or spec.route == "debezium" else None
        databases = ", ".join(f'"{db}"' for db in self.databases)
        lines = [
            "[kafka]", f'bootstrap_servers = "{BOOTSTRAP}"', f'group_id = "{self.group}"',
            f"topics = [{'' if spec.route else repr(self.topic)}]",
            f'user_errors_topic = "{self.user_errors}"', f'system_errors_topic = "{self.system_errors}"', "",
            "[[destinations]]", f'vanity = "{VANITY}"', f'host = "{host}"', f"port = {port}", f'user = "{user}"',
            f"databases = [{databases}]", f"max_connections = {connections}",
            *([f"modes = {modes}"] if modes else []), "",
        ]
        if spec.route:
            table = self.tables[0]
            lines += ["[[routes]]", f'topic = "{self.topic}"', f'vanity = "{VANITY}"', f'database = "{table.database}"',
                      f'table = "{table.name}"', f'format = "{spec.route}"',
                      *([f'mode = "{spec.mode}"'] if spec.route == "json" else []),
                      *(['version = "rev"'] if spec.version else []), ""]
        lines += ["[pipeline]", f"batch_max_messages = {batch}", "", "[http]", "enabled = false", "",
                  "[log]", 'level = "INFO"', 'format = "json"', ""]
        return "\n".join(lines)

    def drop(self) -> None:
        """Best effort: a failed clean-up is reported, never raised over the run's own outcome."""
        from kapow.kafka.clients import delete_topics

        for db in self._made_dbs:
            try:
                with admin_connection() as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
            except psycopg.Error as exc:
                print(f"kapow bench: could not drop database {db}: {exc}", file=sys.stderr)
        self._made_dbs = []
        if self._made_topics:
            self._made_topics = False
            try:
                delete_topics(BOOTSTRAP, [self.topic, self.user_errors, self.system_errors])
            except Exception as exc:
                print(f"kapow bench: could not delete topics of {self.base}: {exc}", file=sys.stderr)
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": BOOTSTRAP})  # kept alive until its futures resolve
            with contextlib.suppress(Exception):  # no group when no writer ran
                for f in admin.delete_consumer_groups([self.group], request_timeout=10).values():
                    f.result(timeout=15)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.drop()
