"""Replicate a table end to end (issue 12): PostgreSQL → Debezium's source connector → Kafka → KaPoW → PostgreSQL.

A source table with a column of every common type is snapshotted (``KAPOW_CDC_ROWS`` rows: 5,000 in ``make test``,
100,000 for the long run), then changed while it streams: inserts (values only the stream gets right among them),
updates and deletes. The writer is killed with SIGKILL in the middle and started again. At the end the target
table must EQUAL the source: ``EXCEPT ALL`` both ways, every column, is empty.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.cdc import source
from tests.cdc.connector import Connector
from tests.integration import kit

ROWS = int(os.environ.get("KAPOW_CDC_ROWS", "5000"))
FIRST = 1_000  # bulk ids start here (the edge rows use small ids)
SENTINEL = 9_999_999


def bulk_copy(conn: psycopg.Connection[object], rows: range) -> None:
    columns = [c for c in source.COLUMNS if c != "c_big"]
    with conn.cursor() as cur, cur.copy(f"COPY orders ({', '.join(columns)}) FROM STDIN".encode()) as copy:
        for i in rows:
            row = source.bulk_row(i, months=True)
            copy.write_row([row.get(c) for c in columns])


def count(db: str) -> int:
    return int(kit.scalar(db, "SELECT count(*) FROM orders"))


@pytest.mark.integration
def test_replicate_a_table_end_to_end_with_a_kill9_in_the_middle(
        tmp_path: Path, make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    target = env.databases[0]
    src, prefix = kit.uid("kcdc"), kit.uid("kcdc")
    kit.create_database(src)
    connector = Connector(tmp_path / "connect", database=src, prefix=prefix, tables="public.orders",
                          settings={"interval.handling.mode": "string"})
    topic = f"{prefix}.public.orders"
    try:
        with psycopg.connect(kit.dsn(src), autocommit=True) as conn:
            source.create_source(conn, "orders")
            source.insert(conn, "orders", source.EDGE_ROWS)
            bulk_copy(conn, range(FIRST, FIRST + ROWS))
        with psycopg.connect(kit.dsn(target), autocommit=True) as conn:
            conn.execute(source.ENUM_DDL)
            source.create_table(conn, "orders")
        snapshot = ROWS + len(source.EDGE_ROWS)
        connector.start()
        kit.wait_for(lambda: topic in kit.topics(), 60, "the connector's topic")
        env.routes = [{"topic": topic, "vanity": "wh", "database": target, "table": "orders", "format": "debezium"}]
        env.destination = {"modes": ["insert", "upsert", "delete"]}
        env.pipeline = {"batch_max_messages": 1000}
        first = writers(env)
        first.wait_assigned(60)
        kit.wait_for(lambda: count(target) >= min(snapshot // 3, 1500), 120, "a third of the snapshot")
        first.kill9()  # in the middle of the snapshot's stream
        assert first.proc.returncode == -signal.SIGKILL
        with psycopg.connect(kit.dsn(src), autocommit=True) as conn:  # changes while no writer runs
            source.insert(conn, "orders", source.STREAMED_ROWS)
            conn.execute("UPDATE orders SET c_text = c_text || ' (updated)', c_numeric = c_numeric + 1"
                         " WHERE id % 7 = 0")
        second = writers(env)
        second.wait_assigned(60)
        with psycopg.connect(kit.dsn(src), autocommit=True) as conn:  # and while one does
            conn.execute("DELETE FROM orders WHERE id % 11 = 0")
            bulk_copy(conn, range(FIRST + ROWS, FIRST + ROWS + 200))
            conn.execute("UPDATE orders SET c_jsonb = jsonb_set(coalesce(c_jsonb, '{}'), '{changed}', 'true')"
                         " WHERE id % 13 = 0")
            conn.execute("INSERT INTO orders (id, c_text) VALUES (%s, 'the end')", (SENTINEL,))
        kit.wait_for(lambda: kit.scalar(target, "SELECT count(*) FROM orders WHERE id = %s", (SENTINEL,)) == 1,
                     180, "the last change")
        assert count(target) == count(src)
        differ = differences(src, target)
        assert differ == [], differ[:10]
        assert kit.read_all(env.user_errors) == []
        assert kit.read_all(env.system_errors) == []
        assert second.alive()
    finally:
        try:
            connector.drop()
        finally:
            kit.drop_database(src)
            kit.remove_topics([topic])


def differences(src: str, target: str) -> list[str]:
    """Copy the target into the source database (a plain table), then compare there with EXCEPT ALL both ways."""
    with psycopg.connect(kit.dsn(target)) as conn, conn.cursor() as cur:
        columns = list(source.COLUMNS)
        with cur.copy(f"COPY orders ({', '.join(columns)}) TO STDOUT".encode()) as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
    with psycopg.connect(kit.dsn(src), autocommit=True) as conn:
        source.create_table(conn, "landed")
        with conn.cursor() as cur, cur.copy(f"COPY landed ({', '.join(columns)}) FROM STDIN".encode()) as copy:
            copy.write(data)
        return source.differences(conn, "orders", "landed")
