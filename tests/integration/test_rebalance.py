"""A rebalance hands partitions over without replays: the writer losing them finishes and commits what it holds.

Two writer processes share a group while a stream is landing: the second one's arrival revokes the first one's
partitions (eager protocol), and later the first one leaves (SIGTERM). Each time, the writer giving partitions up
must finish its in-flight batches and commit them before they move, so that the next owner starts exactly where it
stopped. A BEFORE INSERT trigger logs every row the database is asked to insert, even one that ``ON CONFLICT DO
NOTHING`` then drops, so a replay shows as an id logged twice; the primary key alone would hide it.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable

import pytest

from kapow.client import Publisher
from tests.integration import kit

pytestmark = pytest.mark.integration

# Every packet goes to two tables, one of them slow: at any moment some batch has landed in one table and not yet
# in the other. A writer that let its partitions go without finishing such a batch would have the next owner replay
# the half that had landed.
DDL = """
CREATE TABLE fast (id bigint PRIMARY KEY, v text NOT NULL);
CREATE TABLE slow (id bigint PRIMARY KEY, v text NOT NULL);
CREATE TABLE attempts (tbl text NOT NULL, id bigint NOT NULL);
CREATE FUNCTION log_attempt() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO attempts VALUES (TG_TABLE_NAME, NEW.id); RETURN NEW; END $$;
CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$;
CREATE TRIGGER log_attempt BEFORE INSERT ON fast FOR EACH ROW EXECUTE FUNCTION log_attempt();
CREATE TRIGGER log_attempt BEFORE INSERT ON slow FOR EACH ROW EXECUTE FUNCTION log_attempt();
CREATE TRIGGER slow_down BEFORE INSERT ON slow FOR EACH STATEMENT EXECUTE FUNCTION slow_down();
"""


class Stream(threading.Thread):
    """Publishes ``values`` at about ``rate`` per second, so that rebalances happen in the middle of the stream."""

    def __init__(self, topic: str, values: list[bytes], rate: int) -> None:
        super().__init__(daemon=True)
        self.topic, self.values, self.rate = topic, values, rate
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        step = max(1, self.rate // 20)
        with Publisher(kit.BOOTSTRAP, self.topic) as pub:
            for start in range(0, len(self.values), step):
                if self.halt.is_set():
                    return
                for i in range(start, min(start + step, len(self.values))):
                    pub.send_raw(self.values[i], str(i).encode())
                self.sent = min(start + step, len(self.values))
                self.halt.wait(0.05)


def landed_by(writer: kit.WriterProcess) -> int:
    """Rows this writer's committed batches landed, from its "batch committed" log lines."""
    total = 0
    for line in writer.log().splitlines():
        if line.startswith("{") and '"batch committed"' in line:
            total += int(json.loads(line)["landed"])
    return total


def test_partitions_move_between_writers_mid_stream_without_a_replay(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env(partitions=6)
    db = env.databases[0]
    kit.sql(db, DDL)
    env.pipeline = {"batch_max_messages": 500}
    total = 24_000
    both = [kit.dest(db, "fast"), kit.dest(db, "slow")]
    values = kit.packets(both, [{"id": i, "v": f"row {i}"} for i in range(total)])
    stream = Stream(env.topic, values, rate=2000)
    first = writers(env)
    first.wait_assigned()
    stream.start()
    try:
        kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM slow") >= 2_000, 90, "2,000 rows by the first")
        second = writers(env)  # joins the group: the first one's partitions are revoked and shared out
        kit.wait_for(lambda: "partitions revoked" in first.log() and "partitions assigned" in second.log(), 60,
                     "the first rebalance")
        kit.wait_for(lambda: landed_by(second) > 0, 60, "the second writer to land rows")
        assert stream.is_alive(), "the stream ended before the second rebalance: make it longer"
        first.signal(signal.SIGTERM)  # leaves the group: the second one takes every partition
        assert first.proc.wait(30) == 0, first.log()[-2000:]
        stream.join(120)
        assert stream.sent == total
        kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM fast") == total
                     and kit.scalar(db, "SELECT count(*) FROM slow") == total, 120, "every row in both tables")
        kit.wait_for(lambda: kit.committed_offsets(env.group, env.topic) == kit.end_offsets(env.topic), 60,
                     "the group to commit every offset")
    finally:
        stream.halt.set()
    assert landed_by(first) > 0 and landed_by(second) > 0, "one writer landed everything: nothing was handed over"
    replayed = kit.sql(db, "SELECT tbl, id, count(*) FROM attempts GROUP BY tbl, id HAVING count(*) > 1"
                           " ORDER BY id LIMIT 10")
    assert replayed == [], f"rows asked for more than once (replays across a rebalance): {replayed}"
    assert kit.scalar(db, "SELECT count(*) FROM attempts") == 2 * total
    assert landed_by(first) + landed_by(second) == 2 * total
    assert second.alive()
    assert kit.read_all(env.user_errors) == [] and kit.read_all(env.system_errors) == []


def test_partitions_added_while_the_writer_runs_are_consumed_within_seconds(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    """Adding partitions is how a topic makes room for more writers; records in the new ones waited 293 s, until
    librdkafka's metadata refresh (5 min by default) noticed them."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewPartitions

    env = make_env(partitions=2)
    db = env.databases[0]
    kit.sql(db, "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL)")
    writer = writers(env)
    writer.wait_assigned()
    admin = AdminClient({"bootstrap.servers": kit.BOOTSTRAP})
    admin.create_partitions([NewPartitions(env.topic, 4)])[env.topic].result()
    producer = Producer({"bootstrap.servers": kit.BOOTSTRAP})
    kit.wait_for(lambda: len(producer.list_topics(env.topic, timeout=5).topics[env.topic].partitions) == 4, 10,
                 "the producer to see 4 partitions")
    for partition, value in enumerate(kit.packets([kit.dest(db, "items")], [{"id": i, "v": "x"} for i in range(4)])):
        producer.produce(env.topic, value=value, partition=partition, headers=[("context", kit.CONTEXT)])
    assert producer.flush(30) == 0
    kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM items") == 4, 45, "the records of the new partitions")
    assert writer.alive()
