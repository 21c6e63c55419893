"""Each destination's load is bounded: at most ``max_connections`` sessions per writer process, under any burst.

PRODUCT.md §5: a burst is paced out, not passed on. The writer process runs against the real database while a burst
spread over slow tables offers more parallel work than the bound allows; the server's own ``pg_stat_activity`` counts
the writer's sessions (its pool connects as application ``kapow``) every few milliseconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest

from tests.integration import kit

pytestmark = pytest.mark.integration

TABLES = 12
MAX_CONNECTIONS = 2


class SessionCounter(threading.Thread):
    """Samples the writer's sessions on one database until stopped; ``peak`` is the most seen at once."""

    def __init__(self, database: str) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.peak = 0
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(kit.ADMIN_DSN, autocommit=True) as conn:
            while not self.halt.is_set():
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                   " AND application_name = 'kapow'", (self.database,)).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)
                self.samples += 1
                self.halt.wait(0.005)


def test_a_burst_over_slow_tables_never_opens_more_than_max_connections(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    db = env.databases[0]
    # every statement on these tables takes 0.1 s: work piles up faster than two connections can take it
    kit.sql(db, "CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.1);"
                " RETURN NULL; END $$")
    for t in range(TABLES):
        kit.sql(db, f"CREATE TABLE t{t} (id bigint PRIMARY KEY, v text);"
                    f"CREATE TRIGGER slow BEFORE INSERT ON t{t} FOR EACH STATEMENT EXECUTE FUNCTION slow_down()")
    env.extra_destinations = [{"vanity": "burst", "host": kit.PG_HOST, "port": kit.PG_PORT, "databases": [db],
                               "max_connections": MAX_CONNECTIONS}]
    # small units (a table or two each), so that idle tables wait for a connection instead of riding along in a unit
    env.pipeline = {"batch_max_messages": 40, "batch_max_wait_ms": 5, "unit_max_rows": 4}
    total = 360
    values = [kit.packets([kit.dest(db, f"t{i % TABLES}", vanity="burst")], [{"id": i, "v": "x"}])[0]
              for i in range(total)]
    counter = SessionCounter(db)
    counter.start()
    try:
        writer = writers(env)
        writer.wait_assigned()
        kit.publish(env.topic, values)
        kit.wait_for(lambda: sum(kit.scalar(db, f"SELECT count(*) FROM t{t}") for t in range(TABLES)) == total, 120,
                     "every row of the burst")
    finally:
        counter.halt.set()
        counter.join(10)
    assert counter.samples > 100, "the sessions were hardly sampled: the test proves nothing"
    assert counter.peak <= MAX_CONNECTIONS, f"{counter.peak} sessions with max_connections = {MAX_CONNECTIONS}"
    assert counter.peak == MAX_CONNECTIONS, "the burst never used the whole pool: it did not test the bound"
    assert writer.alive()
    assert kit.read_all(env.user_errors) == [] and kit.read_all(env.system_errors) == []
