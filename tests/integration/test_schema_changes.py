"""Live schema changes mid-stream, as documented: a table changed under a running writer is read again.

docs/errors.md: a new column is noticed within about a second (``unknown_column``: "add the column, KaPoW notices a
new column within about a second"); a missing table is ``unknown_table`` ("create the table"). So, while packets
flow: a column added is used about a second later at the latest; a column dropped fails exactly the packets that
still give it, and only those; a table dropped fails its packets as ``unknown_table`` until it is created again,
and lands them about a second after that. In every case each packet ends in exactly one place (its table or the
user-errors topic), none is parked, and the writer keeps running. "About a second" is checked with a second of
slack: packets sent two seconds after the change must all land.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from kapow.client import Publisher
from kapow.contract import make_packet
from tests.integration import kit

pytestmark = pytest.mark.integration

NOTICED_WITHIN_S = 1.0 + 1.0  # documented: about a second; plus a second of slack for batching and commits


class Stream(threading.Thread):
    """Publishes one packet per id, about ``rate`` a second, and remembers when each was sent (monotonic)."""

    def __init__(self, topic: str, make: Callable[[int], bytes], ids: range, rate: int = 50) -> None:
        super().__init__(daemon=True)
        self.topic, self.make, self.ids, self.rate = topic, make, ids, rate
        self.sent_at: dict[int, float] = {}

    def run(self) -> None:
        with Publisher(kit.BOOTSTRAP, self.topic) as pub:
            for i in self.ids:
                pub.send_raw(self.make(i), str(i).encode())
                self.sent_at[i] = time.monotonic()
                time.sleep(1 / self.rate)


def error_ids(topic: str) -> dict[int, str]:
    """id -> error code of every packet on the user-errors topic."""
    out: dict[int, str] = {}
    for r in kit.read_all(topic):
        data = json.loads(r.value or b"{}")["data"]
        assert data["id"] not in out, f"packet {data['id']} is on the user-errors topic twice"
        out[data["id"]] = r.headers["kapow-error-code"].decode()
    return out


def landed_ids(db: str, table: str = "items") -> set[int]:
    return {row[0] for row in kit.sql(db, f"SELECT id FROM {table}")}


def settle(env: kit.Env, ids: set[int], landed: Callable[[], set[int]]) -> tuple[set[int], dict[int, str]]:
    """Wait until every id is in its table or on the user-errors topic; then check it is in only one of them."""
    state: dict[str, Any] = {}

    def accounted() -> bool:
        state["landed"], state["errors"] = landed(), error_ids(env.user_errors)
        return ids <= state["landed"] | set(state["errors"])

    kit.wait_for(accounted, 90, "every packet landed or refused", interval=0.5)
    both = state["landed"] & set(state["errors"])
    assert not both, f"packets both landed and refused: {sorted(both)[:10]}"
    assert kit.read_all(env.system_errors) == [], "a schema change parked packets: it is the client's business"
    return state["landed"], state["errors"]


def items_env(make_env: Callable[..., kit.Env], ddl: str) -> tuple[kit.Env, str]:
    env = make_env(partitions=1)
    db = env.databases[0]
    kit.sql(db, ddl)
    env.pipeline = {"batch_max_wait_ms": 20}
    return env, db


def test_a_column_added_mid_stream_is_used_within_about_a_second(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env, db = items_env(make_env, "CREATE TABLE items (id bigint PRIMARY KEY, v text)")
    writer = writers(env)
    writer.wait_assigned()
    kit.publish(env.topic, [make_packet([kit.dest(db, "items")], {"id": 0, "v": "before"})])
    kit.wait_for(lambda: landed_ids(db) == {0}, 30, "the first row (the writer reads the table's shape for it)")
    kit.sql(db, "ALTER TABLE items ADD COLUMN colour text")  # at once: the writer's copy of the shape is fresh
    changed_at = time.monotonic()
    stream = Stream(env.topic, lambda i: make_packet([kit.dest(db, "items")], {"id": i, "v": "x", "colour": f"c{i}"}),
                    range(1, 201))
    stream.start()
    stream.join(60)
    landed, errors = settle(env, set(stream.ids), lambda: landed_ids(db))
    assert set(errors.values()) <= {"unknown_column"}, errors
    late = {i for i, at in stream.sent_at.items() if at - changed_at >= NOTICED_WITHIN_S}
    assert late and late <= landed, f"sent {NOTICED_WITHIN_S:.0f} s after the column was added, refused: " \
                                    f"{sorted(late - landed)[:10]}"
    assert kit.scalar(db, "SELECT count(*) FROM items WHERE colour = 'c' || id") == len(landed - {0})
    assert writer.alive()


def test_a_column_dropped_mid_stream_fails_only_the_packets_that_still_give_it(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env, db = items_env(make_env, "CREATE TABLE items (id bigint PRIMARY KEY, v text, extra text)")
    writer = writers(env)
    writer.wait_assigned()

    def packet(i: int) -> bytes:  # even ids give the column that is going away
        data = {"id": i, "v": "x", **({"extra": "e"} if i % 2 == 0 else {})}
        return make_packet([kit.dest(db, "items")], data)

    stream = Stream(env.topic, packet, range(300), rate=75)
    stream.start()
    kit.wait_for(lambda: len(landed_ids(db)) >= 60, 60, "rows before the change")
    kit.sql(db, "ALTER TABLE items DROP COLUMN extra")
    dropped_at = time.monotonic()
    stream.join(60)
    landed, errors = settle(env, set(stream.ids), lambda: landed_ids(db))
    assert set(errors.values()) == {"unknown_column"}, errors
    assert {i for i in errors if i % 2} == set(), "a packet without the dropped column was refused"
    after = {i for i, at in stream.sent_at.items() if at > dropped_at and i % 2 == 0}
    assert after and after <= set(errors), "a packet giving a dropped column landed"
    assert {i for i in landed if i % 2 == 0} <= {i for i, at in stream.sent_at.items() if at <= dropped_at}
    assert writer.alive()


def test_a_table_dropped_and_created_again_refuses_then_lands_within_about_a_second(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    # every row the table takes is logged in a table that outlives it, so rows landed before the drop still count
    items = ("CREATE TABLE items (id bigint PRIMARY KEY, v text);"
             "CREATE TRIGGER remember AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION remember()")
    env, db = items_env(make_env, "CREATE TABLE seen (id bigint PRIMARY KEY);"
                                  "CREATE FUNCTION remember() RETURNS trigger LANGUAGE plpgsql AS"
                                  " $$ BEGIN INSERT INTO seen VALUES (NEW.id); RETURN NEW; END $$;" + items)
    writer = writers(env)
    writer.wait_assigned()

    def packet(i: int) -> bytes:
        return make_packet([kit.dest(db, "items")], {"id": i, "v": "x"})

    kit.publish(env.topic, [packet(i) for i in range(20)])
    kit.wait_for(lambda: landed_ids(db, "seen") == set(range(20)), 30, "the first rows")
    kit.sql(db, "DROP TABLE items")
    kit.publish(env.topic, [packet(i) for i in range(100, 120)])
    kit.wait_for(lambda: set(range(100, 120)) <= set(error_ids(env.user_errors)), 60, "the dropped table's refusals")
    kit.sql(db, items)
    created_at = time.monotonic()
    stream = Stream(env.topic, packet, range(200, 400))
    stream.start()
    stream.join(60)
    ids = set(range(20)) | set(range(100, 120)) | set(stream.ids)
    landed, errors = settle(env, ids, lambda: landed_ids(db, "seen"))
    assert set(errors.values()) == {"unknown_table"}, errors
    assert set(range(20)) <= landed and set(range(100, 120)) <= set(errors)
    late = {i for i, at in stream.sent_at.items() if at - created_at >= NOTICED_WITHIN_S}
    assert late and late <= landed_ids(db), f"sent {NOTICED_WITHIN_S:.0f} s after the table came back, refused: " \
                                            f"{sorted(late - landed)[:10]}"
    assert writer.alive()
