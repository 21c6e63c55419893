"""One team's mistake never stops another's (issue 9): every failure confined to its row, its table, its database.

Each test here reproduces something that, before the lanes, stopped or parked other teams' packets: a trigger
that refuses a row, a deferred foreign key, a locked table, a database that goes away for a while, records too
large for the error topic, and clients that try to exhaust the writer's memory or metric labels.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from confluent_kafka import Producer

from tests.integration import kit
from tests.tools.tcp_proxy import TcpProxy

PLAIN = "CREATE TABLE {t} (id bigint PRIMARY KEY, v text NOT NULL)"
Make = Callable[..., kit.Env]
Start = Callable[[kit.Env], kit.WriterProcess]


def rows(ids: range, v: str = "ok") -> list[dict[str, object]]:
    return [{"id": i, "v": v} for i in ids]


def count(db: str, table: str) -> int:
    return int(kit.scalar(db, f"SELECT count(*) FROM {table}"))


def codes(records: list[kit.Record]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        code = r.headers["kapow-error-code"].decode()
        out[code] = out.get(code, 0) + 1
    return out


def test_rows_a_table_refuses_fail_alone_and_never_open_a_circuit(make_env: Make, writers: Start) -> None:
    """A trigger's RAISE (P0001), a deferred foreign key (23503 at COMMIT), a DEFERRABLE-only unique key and a
    system catalog were parked as system errors and opened the database's circuit for every other table."""
    env = make_env(n_databases=2)
    db, other = env.databases
    kit.sql(db, PLAIN.format(t="plain"))
    kit.sql(db, PLAIN.format(t="guarded") + ";"
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN"
            " IF NEW.v = 'bad' THEN RAISE EXCEPTION 'guarded refuses %%', NEW.id; END IF; RETURN NEW; END$$;"
            "CREATE TRIGGER t_refuse BEFORE INSERT ON guarded FOR EACH ROW EXECUTE FUNCTION refuse()")
    kit.sql(db, "CREATE TABLE parent (id bigint PRIMARY KEY); INSERT INTO parent SELECT generate_series(0, 99);"
                "CREATE TABLE child (id bigint PRIMARY KEY, v text NOT NULL, parent bigint REFERENCES parent"
                " DEFERRABLE INITIALLY DEFERRED)")
    kit.sql(db, "CREATE TABLE defer_uniq (id bigint, v text, UNIQUE (id) DEFERRABLE)")
    kit.sql(other, PLAIN.format(t="plain"))
    writer = writers(env)
    writer.wait_assigned()
    packets: list[bytes] = []
    for i in range(300):
        packets += kit.packets([kit.dest(db, "plain"), kit.dest(other, "plain")], rows(range(i, i + 1)))
        bad = i % 30 == 0
        packets += kit.packets([kit.dest(db, "guarded")], rows(range(i, i + 1), "bad" if bad else "ok"))
        packets += kit.packets([kit.dest(db, "child")], [{"id": i, "v": "x", "parent": 1000 + i if bad else i % 100}])
        if i % 60 == 0:
            packets += kit.packets([kit.dest(db, "pg_class", schema="pg_catalog")], [{"relname": "x"}])
            packets += kit.packets([kit.dest(db, "defer_uniq")], rows(range(i, i + 1)))
    kit.publish(env.topic, packets)
    kit.wait_for(lambda: count(db, "plain") == 300 and count(other, "plain") == 300
                 and count(db, "guarded") == 290 and count(db, "child") == 290, 90, "every good row")
    user = kit.read_all(env.user_errors, expect=10 + 10 + 5 + 5, timeout=60)
    assert codes(user) == {"row_rejected": 10, "constraint_violation": 10, "forbidden_destination": 5,
                           "no_unique_key": 5}, codes(user)
    assert all(b"\n" not in r.headers["kapow-error-message"] for r in user)
    assert kit.read_all(env.system_errors) == []
    assert "circuit opened" not in writer.log()


@contextlib.contextmanager
def locked(db: str, table: str) -> Iterator[None]:
    """Hold a lock that blocks writes (but not reads) on ``table`` for the duration of the block."""
    conn = psycopg.connect(kit.dsn(db))
    try:
        conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE".encode())
        yield
    finally:
        conn.rollback()
        conn.close()


def test_a_locked_table_holds_only_itself_and_parks_nothing(make_env: Make, writers: Start) -> None:
    """A 40 s LOCK TABLE opened the circuit of its database (7,501 packets of a healthy table parked) and stopped
    a table in another database for 20 s."""
    env = make_env(n_databases=2)
    db, other = env.databases
    for table in ("locked", "free"):
        kit.sql(db, PLAIN.format(t=table))
    kit.sql(other, PLAIN.format(t="elsewhere"))
    env.destination = {"lock_timeout_ms": 300}
    writer = writers(env)
    writer.wait_assigned()
    with locked(db, "locked"):
        for wave in range(4):
            ids = range(wave * 500, (wave + 1) * 500)
            kit.publish(env.topic, kit.packets([kit.dest(db, "locked")], rows(ids))
                        + kit.packets([kit.dest(db, "free")], rows(ids))
                        + kit.packets([kit.dest(other, "elsewhere")], rows(ids)))
            kit.wait_for(lambda n=(wave + 1) * 500: count(db, "free") == n and count(other, "elsewhere") == n,
                         30, f"wave {wave} of the free tables while the other one is locked")
        assert count(db, "locked") == 0
        assert "held" in writer.log()
    kit.wait_for(lambda: count(db, "locked") == 2000, 60, "the locked table, once released")
    assert kit.read_all(env.system_errors) == [], "an outage shorter than hold_s parks nothing"
    assert kit.read_all(env.user_errors) == []
    assert "circuit opened" not in writer.log()


def test_a_slow_table_is_written_alone_and_the_others_of_its_database_stop_waiting_for_it(
        make_env: Make, writers: Start) -> None:
    """A trigger sleeping 10 s (under statement_timeout) on one table: every table of its database landed every
    10 s, in lockstep with it, since they shared its units (a hostile run)."""
    env = make_env()
    db = env.databases[0]
    kit.sql(db, PLAIN.format(t="slow") + ";"
            "CREATE FUNCTION nap() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(3); RETURN NULL;"
            " END$$; CREATE TRIGGER t_nap AFTER INSERT ON slow FOR EACH STATEMENT EXECUTE FUNCTION nap()")
    kit.sql(db, PLAIN.format(t="quick"))
    writer = writers(env)  # (kit gives the destination 4 connections: the slow table can have one to itself)
    writer.wait_assigned()
    lags = []
    for wave in range(6):
        ids = range(wave * 10, (wave + 1) * 10)
        kit.publish(env.topic, kit.packets([kit.dest(db, "slow")], rows(ids))
                    + kit.packets([kit.dest(db, "quick")], rows(ids)))
        started = time.monotonic()
        kit.wait_for(lambda n=(wave + 1) * 10: count(db, "quick") == n, 30, f"wave {wave} of the quick table")
        lags.append(time.monotonic() - started)
    # the first waves may share a unit with the slow table (3 s each); once it is known slow it goes alone
    assert max(lags[2:]) < 2.0, [f"{lag:.1f}" for lag in lags]
    kit.wait_for(lambda: count(db, "slow") == 60, 60, "the slow table")
    assert "written alone" in writer.log()
    assert kit.read_all(env.system_errors) == [] and kit.read_all(env.user_errors) == []


def _batches(log: str) -> list[dict[str, Any]]:
    """The writer's "batch committed" lines (JSON logs), in order."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{") and '"batch committed"' in line]


def test_an_outage_shorter_than_hold_parks_nothing_and_a_longer_one_comes_back_by_itself(
        make_env: Make, writers: Start) -> None:
    env = make_env(n_databases=2)
    db, other = env.databases
    kit.sql(db, PLAIN.format(t="items"))
    kit.sql(other, PLAIN.format(t="items"))
    proxy = TcpProxy(kit.PG_PORT).start()
    env.extra_destinations = [{"vanity": "flaky", "host": "127.0.0.1", "port": proxy.port, "databases": [db],
                               "connect_timeout_s": 1, "max_connections": 2}]
    env.pipeline = {"hold_s": 6, "retry_initial_backoff_s": 0.1, "circuit_failures_to_open": 2,
                    "circuit_open_s": 0.5, "redrive_delay_s": 0.5}
    writer = writers(env)
    writer.wait_assigned()
    try:
        # a short outage: shorter than hold_s, nothing is parked, everything lands when it ends
        proxy.stop()
        kit.publish(env.topic, kit.packets([kit.dest(db, "items", vanity="flaky"), kit.dest(other, "items")],
                                           rows(range(0, 500))))
        kit.wait_for(lambda: count(other, "items") == 500, 30, "the healthy database during the outage")
        time.sleep(2)
        assert count(db, "items") == 0
        proxy.start()
        kit.wait_for(lambda: count(db, "items") == 500, 30, "the held packets after a short outage")
        assert kit.read_all(env.system_errors) == []
        # a long outage: past hold_s the packets are parked, and redriven without a command once it is back
        proxy.stop()
        kit.publish(env.topic, kit.packets([kit.dest(db, "items", vanity="flaky"), kit.dest(other, "items")],
                                           rows(range(500, 1500))))
        kit.wait_for(lambda: count(other, "items") == 1500, 30, "the healthy database during the long outage")
        parked = kit.read_all(env.system_errors, expect=1000, timeout=60)
        assert len(parked) == 1000 and codes(parked) == {"database_unavailable": 1000}
        assert count(db, "items") == 500
        before = _batches(writer.log())
        proxy.start()
        kit.wait_for(lambda: count(db, "items") == 1500, 90, "parked packets redriven by themselves")
        time.sleep(1)
        assert count(db, "items") == 1500 and count(other, "items") == 1500
        after = _batches(writer.log())[len(before):]
        # each copy goes to the destination it was parked for, not to the healthy one again (where an old upsert
        # would move a newer row back)
        assert sum(b["landed"] for b in after) == 1000 and sum(b["duplicate"] for b in after) == 0, after
        marks = kit.read_all(f"{env.system_errors}.done", expect=1000, timeout=30)
        assert len({r.key for r in marks}) == 1000, "each parked record marked handled exactly once"
        assert writer.alive()
    finally:
        proxy.stop()


def test_records_too_large_for_the_error_topic_defaults_never_stop_the_writer(make_env: Make, writers: Start) -> None:
    """A 1,000,179-byte packet that fails, a 2 MB packet sent lz4-compressed, and a half-megabyte vanity echoed
    into a header ended in MSG_SIZE_TOO_LARGE and exit 1, on every restart."""
    env = make_env()
    db = env.databases[0]
    kit.sql(db, "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL, n integer)")
    writer = writers(env)
    writer.wait_assigned()
    bad_value = kit.packets([kit.dest(db, "items")], [{"id": 1, "v": "x" * 1_000_000, "n": "not a number"}])[0]
    assert len(bad_value) > 1_000_000
    huge = kit.packets([kit.dest(db, "items")], [{"id": 2, "v": "y" * 2_000_000}])[0]  # too_large, compressible
    vanity = kit.packets([{**kit.dest(db, "items"), "vanity": "v" * 500_000}], [{"id": 3, "v": "z"}])[0]
    producer = Producer({"bootstrap.servers": kit.BOOTSTRAP, "compression.type": "lz4",
                         "message.max.bytes": 10_000_000})
    for key, value in ((b"bad", bad_value), (b"huge", huge), (b"vanity", vanity)):
        producer.produce(env.topic, value=value, key=key, headers=[("context", kit.CONTEXT)])
    assert producer.flush(30) == 0
    kit.publish(env.topic, kit.packets([kit.dest(db, "items")], [{"id": 10 + i, "v": "ok"} for i in range(100)]))
    kit.wait_for(lambda: count(db, "items") == 100, 60, "the good packets around the huge ones")
    errors = {r.key: r for r in kit.read_all(env.user_errors, expect=3, timeout=60)}
    assert set(errors) == {b"bad", b"huge", b"vanity"}
    assert errors[b"bad"].value == bad_value and errors[b"bad"].headers["kapow-error-code"] == b"bad_value"
    assert errors[b"huge"].value == huge and errors[b"huge"].headers["kapow-error-code"] == b"too_large"
    assert errors[b"vanity"].value == vanity
    assert len(errors[b"vanity"].headers["kapow-destination"]) < 2048
    assert len(errors[b"vanity"].headers["kapow-error-message"]) <= 600
    assert writer.alive(), writer.log()[-2000:]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]


def test_what_a_client_controls_is_bounded(make_env: Make, writers: Start) -> None:
    """400 packets with a 1 MB pipeline_context took RSS from 53 to 531 MB; 5,000 unknown databases made 5,000
    metric series; one packet with 2,000 destinations wrote 218 MB of error records."""
    env = make_env()
    db = env.databases[0]
    kit.sql(db, PLAIN.format(t="items"))
    port = kit.free_port()
    env.http_listen = f"127.0.0.1:{port}"
    # What the writer holds of packets is bounded by max_buffer_bytes (a quarter to a half of it while reading
    # ahead), and each consume by the same line (kapow.pipeline.consume): asked for 10,000 records, one consume
    # took 242 of these (208 MB) and RSS peaked +444 MB. What is left past the writer's own bound is librdkafka's
    # prefetch, which it counts in compressed bytes: these lz4 packets of one letter compress ~250 times, and the
    # peak still measured +217 to +275 MB (33 MB of it Python's). The memory freed after them used to stay in the
    # malloc arenas (RSS +3 to +305 MB, in steps, by how many threads' arenas the records touched); it is now
    # given back within the step after the packets are let go (kapow.pipeline.process.Trimmer), measured -1 to
    # +1 MB; the bound waits a few seconds for that step. 100 MB is far below the unbounded context caches this
    # test was written for (RSS +478 MB).
    env.pipeline = {"max_buffer_bytes": 64 * 1024 * 1024}
    writer = writers(env)
    writer.wait_assigned()
    kit.publish(env.topic, kit.packets([kit.dest(db, "items")], rows(range(10))))
    kit.wait_for(lambda: count(db, "items") == 10, 30, "warm-up")
    before = rss_mb(writer.proc.pid)
    pad = "p" * 900_000
    big = [b'{"pipeline_context":{"destinations":[' + json.dumps({**kit.dest(db, "items"), "table": "items"}).encode()
           + b'],"pad":"' + pad.encode() + b'%d"},"data":{"id":%d,"v":"big"}}' % (i, 1000 + i) for i in range(400)]
    kit.publish(env.topic, big)
    kit.wait_for(lambda: count(db, "items") == 410, 120, "400 packets with a 1 MB pipeline_context")
    sized = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    batches = float(re.search(r"^kapow_batch_size_count (\S+)$", sized, re.M).group(1))  # type: ignore[union-attr]
    small = float(re.search(r'^kapow_batch_size_bucket\{le="50.0"\} (\S+)$', sized, re.M).group(1))  # type: ignore[union-attr]
    assert small == batches, "a consume took more than the read-ahead line (32 MB: 35 packets) of these"
    try:
        kit.wait_for(lambda: rss_mb(writer.proc.pid) - before < 100, 10, "the memory of 400 large packets back")
    except AssertionError:
        raise AssertionError(f"RSS grew by {rss_mb(writer.proc.pid) - before:.0f} MB for 400 large packets") from None
    kit.publish(env.topic, [kit.packets([kit.dest(f"db_{i}", "items")], [{"id": i, "v": "x"}])[0]
                            for i in range(5000)])
    many = kit.packets([kit.dest(db, f"t{i}") for i in range(2000)], [{"id": 1, "v": "x"}])
    kit.publish(env.topic, many)
    user = kit.read_all(env.user_errors, expect=5001, timeout=90)
    assert len(user) == 5001
    fanout = [r for r in user if r.headers["kapow-error-code"] == b"too_many_destinations"]
    assert len(fanout) == 1 and fanout[0].value == many[0]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    labels = set(re.findall(r'database="([^"]*)"', metrics))
    assert labels <= {db, "-"}, f"{len(labels)} database labels"


def test_sighup_is_logged_and_sigterm_is_bounded_with_a_locked_table(make_env: Make, writers: Start) -> None:
    import signal

    env = make_env()
    db = env.databases[0]
    kit.sql(db, PLAIN.format(t="items"))
    env.destination = {"lock_timeout_ms": 60_000, "statement_timeout_ms": 120_000}  # a lock that does not give up
    env.pipeline = {"shutdown_deadline_s": 3}
    port = kit.free_port()
    env.http_listen = f"127.0.0.1:{port}"
    writer = writers(env)
    writer.wait_assigned()
    writer.signal(signal.SIGHUP)
    kit.wait_for(lambda: "SIGHUP" in writer.log(), 10, "the SIGHUP line")
    assert writer.alive()
    ready: list[int] = []
    with locked(db, "items"):
        kit.publish(env.topic, kit.packets([kit.dest(db, "items")], rows(range(100))))
        time.sleep(1)
        started = time.monotonic()
        writer.signal(signal.SIGTERM)

        def probe() -> None:  # /readyz every 100 ms until the writer is gone
            while writer.alive():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                        ready.append(answer.status)
                except urllib.error.HTTPError as exc:
                    ready.append(exc.code)
                except OSError:
                    pass
                time.sleep(0.1)

        threading.Thread(target=probe).start()
        code = writer.proc.wait(30)
        took = time.monotonic() - started
    assert code == 0, writer.log()[-2000:]
    assert took < 3 + 5, f"SIGTERM took {took:.1f} s with a locked table (deadline 3 s)"
    assert 503 in ready, f"/readyz answered {ready} while draining"
    assert count(db, "items") == 0  # nothing landed, nothing committed: a restart replays them


def test_healthz_fails_while_commits_are_stuck_and_recovers(make_env: Make, writers: Start) -> None:
    """/healthz said ok and lag showed 0 while nothing was committed (an error topic refusing every write)."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    def user_topic_limit(value: str) -> None:
        resource = ConfigResource("topic", env.user_errors, incremental_configs=[
            ConfigEntry("max.message.bytes", value, incremental_operation=AlterConfigOpType.SET)])
        admin = AdminClient({"bootstrap.servers": kit.BOOTSTRAP})  # kept alive until its futures resolve
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(30)

    def health() -> tuple[int, dict[str, object]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    env = make_env()
    db = env.databases[0]
    kit.sql(db, PLAIN.format(t="items"))
    port = kit.free_port()
    env.http_listen = f"127.0.0.1:{port}"
    env.pipeline = {"commit_stall_s": 4}
    writer = writers(env)
    writer.wait_assigned()
    assert health()[0] == 200
    user_topic_limit("64")  # the user-errors topic now refuses every record
    kit.publish(env.topic, [b"not a packet", *kit.packets([kit.dest(db, "items")], rows(range(10)))])
    kit.wait_for(lambda: health()[0] == 503, 30, "/healthz to say the commits are stuck")
    _status, body = health()
    assert "no commit" in str(body.get("reason")), body
    assert count(db, "items") == 10  # the rows landed; only the commit waits for the error record
    user_topic_limit("1048588")
    kit.wait_for(lambda: health()[0] == 200, 30, "/healthz to recover once the error record is written")
    assert len(kit.read_all(env.user_errors, expect=1)) == 1


def test_at_a_thousand_tables_a_locked_table_and_bad_rows_hold_only_themselves(make_env: Make, writers: Start) -> None:
    """Many tables share one transaction per unit; each is fenced: a locked one and one with bad rows must not
    put the other 998 tables' rows in their fate (issue 16)."""
    env = make_env()
    db = env.databases[0]
    tables = 1000
    kit.sql(db, ";".join(PLAIN.format(t=f"t{i}") for i in range(tables))
            + ";ALTER TABLE t7 ADD CONSTRAINT short CHECK (length(v) < 10)")
    env.destination = {"lock_timeout_ms": 300}
    writer = writers(env)
    writer.wait_assigned()
    packets = []
    for n in range(5):
        for i in range(tables):
            bad = i == 7 and n % 2 == 0
            packets += kit.packets([kit.dest(db, f"t{i}")], [{"id": n, "v": "far too long a value" if bad else "ok"}])
    with locked(db, "t3"):
        kit.publish(env.topic, packets)
        others = " + ".join(f"(SELECT count(*) FROM t{i})" for i in range(tables) if i != 3)
        kit.wait_for(lambda: kit.scalar(db, f"SELECT {others}") == (tables - 1) * 5 - 3, 120,
                     "every table but the locked one (and t7's three bad rows)")
        assert count(db, "t3") == 0
    kit.wait_for(lambda: count(db, "t3") == 5, 60, "the locked table once released")
    user = kit.read_all(env.user_errors, expect=3, timeout=30)
    assert codes(user) == {"constraint_violation": 3}
    assert kit.read_all(env.system_errors) == []
    assert "circuit opened" not in writer.log()


def test_a_batch_the_client_cannot_decompress_is_stepped_over_record_by_record(make_env: Make,
                                                                                writers: Start) -> None:
    """110 records of 1 MB of one letter, zstd-compressed into one 5 kB batch, decompress past librdkafka's
    receive.message.max.bytes (100 MB): it reported _BAD_COMPRESSION at the batch's first offset twice a second,
    forever, and every packet behind it on that partition waited. Each of its offsets is now one `undecodable`
    user error and the partition goes on: two such batches with packets between them, one at a partition's very
    end (the search's upper bound is the high watermark), and a partition of packets alone."""
    env = make_env()
    db = env.databases[0]
    kit.sql(db, PLAIN.format(t="items"))
    plain = Producer({"bootstrap.servers": kit.BOOTSTRAP})
    # a long linger, then flush, from a producer that already knows the partitions' leaders: the 110 records go
    # as one batch (with 50 ms the producer sent 80, then 30; a first produce sent 61, then 49)
    bomber = Producer({"bootstrap.servers": kit.BOOTSTRAP, "compression.type": "zstd", "linger.ms": 10_000,
                       "batch.size": 900_000_000, "message.max.bytes": 1_000_000_000})
    bomber.produce(env.topic, value=b"warm-up", partition=5)  # no context header: filtered
    assert bomber.flush(30) == 0
    bomb = kit.packets([kit.dest(db, "items")], [{"id": 0, "v": "a" * 1_000_000}])[0]

    def good(partition: int, ids: range) -> None:
        for value in kit.packets([kit.dest(db, "items")], rows(ids)):
            plain.produce(env.topic, value=value, partition=partition, headers=[("context", kit.CONTEXT)])
        assert plain.flush(30) == 0

    def bombs(partition: int) -> None:
        for _ in range(110):
            bomber.produce(env.topic, value=bomb, partition=partition, headers=[("context", kit.CONTEXT)])
        assert bomber.flush(60) == 0

    good(0, range(1, 6))  # partition 0: offsets 0-4 packets, 5-114 a bomb, 115-119 packets, 120-229 a bomb,
    bombs(0)  # 230-234 packets
    good(0, range(6, 11))
    bombs(0)
    good(0, range(11, 16))
    good(1, range(100, 200))  # partition 1: packets alone
    good(2, range(200, 205))  # partition 2: 0-4 packets, 5-114 a bomb at its very end
    bombs(2)
    assert kit.end_offsets(env.topic)[0] == 235 and kit.end_offsets(env.topic)[2] == 115, "one batch per bomb"
    writer = writers(env)
    kit.wait_for(lambda: count(db, "items") == 120, 60, "every packet, around and behind the batches")
    user = kit.read_all(env.user_errors, expect=330, timeout=60)
    assert {r.headers["kapow-error-code"] for r in user} == {b"undecodable"}
    stepped = sorted((int(r.headers["kapow-source-partition"]), int(r.headers["kapow-source-offset"])) for r in user)
    assert stepped == [(0, o) for o in [*range(5, 115), *range(120, 230)]] + [(2, o) for o in range(5, 115)]
    assert all(r.value is None for r in user)
    for r in user:  # each names its own batch (records come from several partitions: in no fixed order)
        offset = int(r.headers["kapow-source-offset"])
        span = b"offsets 5-114 of" if offset < 115 else b"offsets 120-229 of"
        assert span in r.headers["kapow-error-message"], (offset, r.headers["kapow-error-message"])
    kit.wait_for(lambda: kit.committed_offsets(env.group, env.topic).get(2) == 115, 30, "the commit past the end")
    committed = kit.committed_offsets(env.group, env.topic)
    assert committed[0] == 235 and committed[1] == 100, committed
    assert count(db, "items") == 120
    assert writer.alive()
    assert writer.log().count("_BAD_COMPRESSION") == 0
    # the audit steps over the same batches: each of their offsets is the user error the writer reported
    from kapow.audit import audit
    from kapow.config import load_config

    report = audit(load_config(env.write_config()))
    assert {"total": report.total, **report.counts} == {
        "total": 451, "filtered": 1, "landed": 120, "user_errors": 330, "parked": 0, "purged": 0, "pending": 0,
        "missing": 0}, report
    assert report.ok
