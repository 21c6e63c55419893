"""Routes (issue 12): plain JSON topics and Debezium change events land with every guarantee of packets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Producer

from tests.integration import kit

Make = Callable[..., kit.Env]
Start = Callable[[kit.Env], kit.WriterProcess]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"


def produce(topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": kit.BOOTSTRAP, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, key=key, value=value)  # no context header: routed records need none
    assert producer.flush(30) == 0


def routed_env(make_env: Make, **route: object) -> tuple[kit.Env, str, str]:
    env = make_env()
    db = env.databases[0]
    topic = kit.uid("kt") + ".plain"
    kit.create_topic(topic, 3)
    env.routes = [{"topic": topic, "vanity": "wh", "database": db, **route}]
    env.destination = {"modes": ["insert", "upsert", "delete"]}
    return env, db, topic


def test_a_json_route_upserts_and_deletes_by_tombstone(make_env: Make, writers: Start) -> None:
    env, db, topic = routed_env(make_env, table="accounts", mode="upsert", key=["id"],
                                metadata={"offset": "src_offset"})
    kit.sql(db, "CREATE TABLE accounts (id bigint PRIMARY KEY, name text, balance numeric, src_offset bigint)")
    writer = writers(env)
    writer.wait_assigned()
    def key(i: int) -> bytes:  # a scalar key (the route's one key column), or an object key: one per id, always
        return json.dumps({"id": i}).encode() if i % 20 == 0 else str(i).encode()

    records: list[tuple[bytes | None, bytes | None]] = []
    for i in range(300):
        records.append((key(i), json.dumps({"id": i, "name": f"n{i}", "balance": "1.50"}).encode()))
    for i in range(0, 300, 3):  # corrections: only the balance; the name stays
        records.append((key(i), json.dumps({"id": i, "balance": "9.99"}).encode()))
    for i in range(0, 300, 10):  # tombstones delete by the key
        records.append((key(i), None))
    records.append((b"bad", b"{not json"))
    records.append((b"bad2", json.dumps({"id": 1000, "nope": 1}).encode()))
    produce(topic, records)
    kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM accounts") == 270
                 and kit.scalar(db, "SELECT count(*) FROM accounts WHERE balance = 9.99") == 90, 60,
                 "upserts, corrections and deletes")
    assert kit.scalar(db, "SELECT count(*) FROM accounts WHERE name IS NULL") == 0, "a correction erased a column"
    assert kit.scalar(db, "SELECT count(*) FROM accounts WHERE src_offset IS NULL") == 0
    errors = kit.read_all(env.user_errors, expect=2, timeout=30)
    assert sorted(r.headers["kapow-error-code"] for r in errors) == [b"not_json", b"unknown_column"]
    assert kit.read_all(env.system_errors) == []


def test_an_insert_route_skips_tombstones_and_keeps_the_first_row(make_env: Make, writers: Start) -> None:
    env, db, topic = routed_env(make_env, table="events")
    kit.sql(db, "CREATE TABLE events (id bigint PRIMARY KEY, v text)")
    writer = writers(env)
    writer.wait_assigned()
    produce(topic, [(b"1", b'{"id": 1, "v": "first"}'), (b"1", None), (b"1", b'{"id": 1, "v": "second"}')])
    kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM events") == 1, 30, "the row")
    assert kit.scalar(db, "SELECT v FROM events") == "first"
    kit.wait_for(lambda: sum(max(0, o) for o in kit.committed_offsets(env.group, topic).values()) == 3, 30,
                 "all three committed")
    assert kit.read_all(env.user_errors) == []


def _events(name: str) -> list[tuple[bytes | None, bytes | None]]:
    out = []
    for line in (FIXTURES / name).read_text().splitlines():
        if line.strip():
            event = json.loads(line)
            out.append((event["key"].encode() if event.get("key") else None,
                        event["value"].encode() if event.get("value") else None))
    return out


def test_a_debezium_route_applies_real_change_events_with_and_without_the_schema(
        make_env: Make, writers: Start) -> None:
    """Real events captured from Debezium 3.6.1 (tests/fixtures/debezium: snapshot reads, a create, updates, a
    delete and its tombstone), replayed into fresh tables: the same rows land either way."""
    import psycopg

    from tests.cdc import source

    env = make_env()
    db = env.databases[0]
    env.destination = {"modes": ["insert", "upsert", "delete"]}
    env.routes = []
    with psycopg.connect(kit.dsn(db), autocommit=True) as conn:
        source.create_source(conn, "with_schema")
        source.create_table(conn, "without_schema")
    for flavour in ("with-schema", "without-schema"):
        topic = kit.uid("kt") + f".{flavour}"
        kit.create_topic(topic, 1)
        env.routes.append({"topic": topic, "vanity": "wh", "database": db, "table": flavour.replace("-", "_"),
                           "format": "debezium"})
    writer = writers(env)
    writer.wait_assigned()
    for route in env.routes:
        produce(str(route["topic"]), _events(f"events-{str(route['table']).replace('_', '-')}.jsonl"))
    for table in ("with_schema", "without_schema"):  # r-1..r-5, c-100001, u-11 (an upsert), u-3; d-1 deletes
        kit.wait_for(lambda t=table: kit.scalar(db, f"SELECT count(*) FROM {t}") == 6, 60, f"{table} rows")
    assert kit.scalar(db, "SELECT count(*) FROM with_schema WHERE id = 1") == 0
    assert kit.read_all(env.user_errors) == [], [r.headers for r in kit.read_all(env.user_errors)]
    with psycopg.connect(kit.dsn(db)) as conn:  # the two captures differ only in how intervals were sent
        differ = source.differences(conn, "with_schema", "without_schema")
        assert all(" c_interval: " in line for line in differ), differ


def test_a_route_to_a_missing_table_or_one_without_its_key_fails_at_start_in_one_line(
        make_env: Make, writers: Start) -> None:
    env, _db, _topic = routed_env(make_env, table="nope", mode="upsert")
    writer = writers(env)
    assert writer.proc.wait(60) == 2
    lines = [line for line in writer.log().splitlines() if line.strip()]
    assert lines[-1].startswith("kapow: config error: routes[0] (wh/") and "nope does not exist" in lines[-1]
    assert "Traceback" not in writer.log()

    env2, db2, _topic2 = routed_env(make_env, table="loose", mode="upsert")
    kit.sql(db2, "CREATE TABLE loose (id bigint, v text)")
    writer2 = writers(env2)
    assert writer2.proc.wait(60) == 2
    assert "no primary key or unique constraint" in writer2.log().splitlines()[-1]
