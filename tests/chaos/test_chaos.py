"""Issue #6: the guarantees of PRODUCT.md §5 under faults, with exact accounting (see harness.py).

Short variants (part of `make test`) take a few minutes in all; `KAPOW_CHAOS=long` (`make chaos`) runs the long
ones. Every scenario: packets with unique ids, ~1 % poison, real broker, real database, real writer processes.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.chaos.harness import LONG, Dest, Scenario, end_offsets, uid, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

Make = Callable[..., Scenario]
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
GRACE_S = 30  # test 6: more time, the broker still down, for the writer to show the stream goes on without it


def pick(short: float, long: float) -> float:
    return long if LONG else short


def test_kill9_at_random_moments(scenario: Make) -> None:
    """1. kill -9 of the writer at random moments, repeated; a fresh writer each time picks up the tail."""
    kills = int(pick(5, 15))
    rate = pick(500, 800)
    s = scenario("kill9", dests=[Dest("wh", uid("chaos_db"))], kafka_settings=FAST_GROUP).setup()
    s.feed(int(rate * pick(25, 150)), rate)
    rng = random.Random()
    w = s.start_writer()
    w.wait_assigned(60)
    for k in range(kills):
        time.sleep(rng.uniform(0.3, pick(2.0, 8.0)))
        assert w.alive(), w.log()[-3000:]
        w.kill9()
        s.audit(f"after kill -9 #{k + 1}")
        ev = s.fault("kill -9")
        w = s.start_writer()
        s.healed(ev)
        w.wait_assigned(60)
    r = s.finish()
    assert r["faults"] == kills


def test_sigterm_under_load(scenario: Make) -> None:
    """2. SIGTERM mid-stream: exit 0 within the deadline, everything landed is committed, nothing is redone."""
    stops = int(pick(2, 6))
    rate = pick(600, 1000)
    deadline = 10.0
    s = scenario("sigterm", dests=[Dest("wh", uid("chaos_db"))], kafka_settings=FAST_GROUP,
                 pipeline={"batch_max_messages": 500, "shutdown_deadline_s": deadline}, replays_expected=False)
    s.setup()
    s.feed(int(rate * pick(25, 120)), rate)
    w = s.start_writer()
    for k in range(stops):
        w.wait_assigned(60)
        s.wait_landed(s.landed() + 200, 60)
        time.sleep(random.uniform(0.2, pick(2.0, 10.0)))
        started = time.monotonic()
        w.signal(signal.SIGTERM)
        code = w.proc.wait(deadline + 20)
        took = time.monotonic() - started
        assert code == 0, w.log()[-3000:]
        assert took < deadline + 5, f"SIGTERM exit took {took:.1f} s"
        assert "writer stopped" in w.log()
        s.audit(f"after SIGTERM #{k + 1}").clean = True
        ev = s.fault("SIGTERM")
        w = s.start_writer()
        s.healed(ev)
    # a clean stop commits everything it landed, so the next writer replays nothing
    s.finish(max_redelivered=0)


def test_rebalance_storm(scenario: Make) -> None:
    """3. Up to three writers in one group, added and removed (SIGTERM) every few seconds."""
    rate = pick(600, 1000)
    storm = pick(22, 150)
    s = scenario("rebalance", dests=[Dest("wh", uid("chaos_db"))], kafka_settings=FAST_GROUP).setup()
    s.feed(int(rate * (storm + 5)), rate)
    for _ in range(3):
        s.start_writer()
    s.writers[0].wait_assigned(60)
    rng = random.Random()
    changes = 0
    removed: set[int] = set()  # writers this test stopped; every other one must be alive at every step
    end = time.monotonic() + storm
    while time.monotonic() < end:
        time.sleep(rng.uniform(1.5, 4.0))
        for i, w in enumerate(s.writers):
            assert i in removed or w.alive(), f"writer {i} died mid-storm (exit {w.proc.returncode}):\n" \
                                              f"{w.log()[-3000:]}"
        alive = [w for i, w in enumerate(s.writers) if i not in removed]
        if len(alive) >= 3 or (len(alive) > 1 and rng.random() < 0.5):
            victim = rng.choice(alive)
            ev = s.fault("writer removed")
            code = victim.stop(40)
            removed.add(s.writers.index(victim))
            assert code == 0, victim.log()[-3000:]
            s.healed(ev)
        else:
            ev = s.fault("writer added")
            s.start_writer()
            s.healed(ev)
        changes += 1
        if changes % 4 == 0:
            s.audit(f"storm change {changes}")
    r = s.finish()
    assert r["writers"] >= 5


def _private_pg() -> object:
    from tests.tools.private_postgres import PrivatePostgres

    pg = PrivatePostgres()
    pg.start()
    return pg


def test_postgres_restarted_and_stopped(scenario: Make) -> None:
    """4. The destination's PostgreSQL restarted (fast, immediate): shorter than hold_s, nothing is parked; then
    stopped for longer than hold_s: packets are parked, and land once it is back, with no command typed."""
    from tests.tools.private_postgres import PrivatePostgres

    pg = PrivatePostgres()
    try:
        pg.start()
        rate = pick(500, 800)
        hold = 8.0
        outage = pick(16, 60)
        d = Dest("wh", uid("chaos_db"), port=pg.port, read_port=pg.port, connect_timeout_s=2.0)
        s = scenario("pg_restart", dests=[d], kafka_settings=FAST_GROUP,
                     pipeline={"batch_max_messages": 500, "hold_s": hold, "circuit_open_s": 1.0,
                               "redrive_delay_s": 1.0}).setup()
        s.feed(int(rate * (outage + pick(20, 100))), rate)
        s.start_writer().wait_assigned(60)
        for mode in ["fast", "immediate"] * int(pick(1, 3)):
            s.wait_landed(s.landed() + 500, 90)
            ev = s.fault(f"restart ({mode})")
            pg.restart(mode)
            s.healed(ev)
            s.audit(f"after {mode} restart")
            time.sleep(pick(2, 10))
        s.wait_landed(s.landed() + 500, 90)
        assert not s.parked()[0], "a restart shorter than hold_s parked packets"
        ev = s.fault(f"stopped {outage:.0f} s (hold_s {hold:.0f})")
        pg.stop("fast")
        time.sleep(outage)
        assert s.parked()[0], "an outage longer than hold_s parked nothing: the fault did not bite"
        pg.start()
        s.healed(ev)
        s.audit("after the outage")
        s.feed(1500, 250)  # more load after the fault, so that recovery shows
        s.wait_landed(s.landed() + 200, 90)
        assert all(w.alive() for w in s.writers), "a writer died with its database"
        r = s.finish()
        assert r["recovery_s"] is not None and r["redriven"] == r["parked"] > 0
    finally:
        pg.destroy()


def test_destination_table_locked(scenario: Make) -> None:
    """5. LOCK TABLE … ACCESS EXCLUSIVE by another session: held shorter than hold_s, nothing is parked (the table
    waits, alone); held longer, its packets are parked and land by themselves once the lock is gone."""
    rate = pick(500, 800)
    hold = pick(6.0, 20.0)
    short, long = pick(4, 12), pick(12, 40)
    d = Dest("wh", uid("chaos_db"), statement_timeout_ms=1500)
    s = scenario("table_lock", dests=[d], kafka_settings=FAST_GROUP,
                 pipeline={"batch_max_messages": 500, "hold_s": hold, "redrive_delay_s": 1.0}).setup()
    s.feed(int(rate * (short + long + pick(20, 40))), rate)
    s.start_writer().wait_assigned(60)
    for k, seconds in enumerate((short, long)):
        s.wait_landed(s.landed() + 300, 90)
        with psycopg.connect(d.dsn(), connect_timeout=5) as conn:
            conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            ev = s.fault(f"table locked {seconds:.0f} s (hold_s {hold:.0f})")
            time.sleep(seconds)
            if k == 0:
                assert not s.parked()[0], "a lock shorter than hold_s parked packets"
            else:
                assert s.parked()[0], "a lock longer than hold_s parked nothing: the fault did not bite"
            conn.commit()
        s.healed(ev)
        s.audit(f"after lock #{k + 1}")
        time.sleep(pick(1, 10))
    log = "".join(w.log() for w in s.writers)
    assert "held" in log, "the lock never held the table: the fault did not bite"
    assert "circuit opened" not in log, "a locked table opened its database's circuit"
    r = s.finish()
    assert r["redriven"] == r["parked"] > 0


def test_leader_broker_killed(scenario: Make) -> None:
    """6. Three-broker KRaft cluster (RF 3, min.insync.replicas 2): the leader broker killed mid-stream.

    The writer creates its own error topics, as in production: they must survive the loss of one broker too.
    """
    from tests.chaos.kafka_cluster import KafkaCluster

    cluster = KafkaCluster()
    s: Scenario | None = None
    try:
        cluster.start()
        rate = pick(500, 800)
        down = pick(15, 45)
        kills = int(pick(1, 3))
        s = scenario("broker_kill", bootstrap=cluster.bootstrap, replicas=3, dests=[Dest("wh", uid("chaos_db"))],
                     kafka_settings=FAST_GROUP).setup()
        s.feed(int(rate * (kills * (down + pick(8, 20)) + 8)), rate)
        s.start_writer().wait_assigned(90)
        for k in range(kills):
            s.wait_landed(s.landed() + 1000, 120)
            leader = cluster.leader_of(s.topic, k % s.partitions)
            ev = s.fault(f"broker {leader} killed")
            before_rows, before_commit = s.landed(), s.committed_total()
            before_fed = sum(end_offsets(cluster.bootstrap, s.topic).values())
            cluster.kill(leader)
            time.sleep(down)
            # the stream went on without the broker: rows landed and offsets moved on every partition, measured
            # against what the feed got onto the topic meanwhile (the writer cannot land what was never published).
            # The broker stays down while the writer is given up to GRACE_S more to show it: on a slow machine the
            # writer landed 2,130 of 7,838 rows in a 15 s window (CI, twice in a day). Not analysed; the likely
            # cause is the failover itself: new leaders after broker.session.timeout.ms (4 s), and when the killed
            # broker was the group's coordinator too, its move and the member's rejoin (session.timeout.ms 6 s).
            fed = sum(end_offsets(cluster.bootstrap, s.topic).values()) - before_fed
            assert fed > rate * down * 0.2, f"the feed published only {fed} packets in {down:.0f} s: no fault to judge"
            expected = min(rate * down, fed) * 0.4
            waited = down
            while True:
                progress = s.landed() - before_rows
                moved = s.committed_total() - before_commit
                if (progress > expected and moved > expected) or waited >= down + GRACE_S:
                    break
                time.sleep(1)
                waited += 1
            assert progress > expected, f"{progress} rows landed in {waited:.0f} s without broker {leader} ({fed} fed)"
            assert moved > expected, f"offsets moved by {moved} in {waited:.0f} s without broker {leader} ({fed} fed)"
            print(f"broker {leader} down {waited:.0f} s: {progress} rows landed, offsets moved by {moved} ({fed} fed)")
            s.audit(f"broker {leader} down")
            cluster.start_node(leader)
            cluster.wait_ready(120, [leader])
            s.healed(ev)
        s.finish()
    finally:
        if s is not None:
            s.teardown()  # while the cluster is still there to delete its topics
        cluster.destroy()


def test_connections_cut_and_stalled(scenario: Make) -> None:
    """7. Connections between the writer and PostgreSQL cut, refused and stalled (a TCP proxy in between).

    A second destination, reached directly, must keep landing while the first one is stalled (§5: a slow or
    dead destination never stops the others).
    """
    from tests.tools.tcp_proxy import TcpProxy

    rate = pick(500, 800)
    stall = pick(14, 45)
    with TcpProxy(harness_pg_port()) as proxy:
        flaky = Dest("px", uid("chaos_db"), port=proxy.port, statement_timeout_ms=2000, connect_timeout_s=2.0)
        direct = Dest("wh", uid("chaos_db"))
        s = scenario("tcp_faults", dests=[flaky, direct], kafka_settings=FAST_GROUP,
                     pipeline={"batch_max_messages": 500, "hold_s": 8.0, "circuit_open_s": 1.0,
                               "redrive_delay_s": 1.0}).setup()
        cuts = int(pick(4, 20))
        s.feed(int(rate * (cuts + 5 + stall * pick(1, 2) + 12)), rate)  # the load outlasts the faults
        s.start_writer().wait_assigned(60)
        for _ in range(cuts):  # connections reset mid-transaction
            time.sleep(random.uniform(0.3, 1.5))
            ev = s.fault("connections cut")
            proxy.cut()
            s.healed(ev)
        s.audit(f"after {cuts} cuts")
        ev = s.fault("connections refused 5 s")
        proxy.stop()
        time.sleep(5)
        proxy.start()
        s.healed(ev)
        s.wait_landed(s.landed() + 300, 90)
        assert not s.parked()[0], "cuts and a refusal shorter than hold_s parked packets"
        for k in range(int(pick(1, 2))):
            ev = s.fault(f"stalled {stall:.0f} s")
            proxy.mode = "stall"
            half = time.monotonic() + stall / 2
            time.sleep(stall / 2)
            other = direct.sql("SELECT count(*) FROM events")[0][0]
            time.sleep(stall / 2)
            other_later = direct.sql("SELECT count(*) FROM events")[0][0]
            proxy.mode = "forward"
            s.healed(ev)
            assert other_later > other, (
                f"stall #{k + 1}: the healthy destination landed nothing in the last {time.monotonic() - half:.0f} s"
                " of a stall of the other")
            s.audit(f"after stall #{k + 1}")
            s.feed(1500, 250)  # more load after the fault, so that recovery shows
            s.wait_landed(s.landed() + 200, 90)
        assert s.parked()[0], "a stall longer than hold_s parked nothing: the fault did not bite"
        r = s.finish()
        assert r["redriven"] == r["parked"]


def harness_pg_port() -> int:
    from tests.chaos.harness import PG_PORT

    return PG_PORT


def _topic_config(bootstrap: str, topic: str, key: str, value: str) -> None:
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource("topic", topic, incremental_configs=[
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)])
    for f in admin.incremental_alter_configs([res]).values():
        f.result(30)


def test_error_topic_unwritable(scenario: Make) -> None:
    """8. The user-errors topic refuses every write for a while: nothing is committed past a poison packet it
    cannot take, nothing is lost, and everything goes through once it can.

    The broker refuses with MSG_SIZE_TOO_LARGE (topic max.message.bytes lowered to 64, then restored). The
    suggested min.insync.replicas=2 on a one-replica topic does not bite on Kafka 4.x: the broker caps the
    effective minimum ISR at the replication factor, so acks=all writes still succeed.
    """
    from tests.chaos.harness import end_offsets

    rate = pick(500, 800)
    blocked = pick(10, 60)
    s = scenario("error_topic", dests=[Dest("wh", uid("chaos_db"))], kafka_settings=FAST_GROUP).setup()
    w = s.start_writer()
    w.wait_assigned(60)  # the writer has created (and sized) its error topics: now break the user-errors one
    _topic_config(s.bootstrap, s.user_errors, "max.message.bytes", "64")
    s.feed(int(rate * (blocked + pick(15, 40))), rate)
    ev = s.fault(f"user-errors topic unwritable {blocked:.0f} s")
    s.wait_landed(s.landed() + 300, 60)
    time.sleep(blocked / 2)
    s.audit("error topic blocked (1)")
    stuck = s.committed_total()
    time.sleep(blocked / 2)
    s.audit("error topic blocked (2)")
    assert sum(end_offsets(s.bootstrap, s.user_errors).values()) == 0, "the fault did not bite"
    assert s.committed_total() - stuck < rate * 2, "offsets ran on past packets that had nowhere to go"
    assert "too large for" in w.log() or "not delivered" in w.log(), "the writer never saw a failed delivery"
    _topic_config(s.bootstrap, s.user_errors, "max.message.bytes", "1048588")
    s.healed(ev)
    assert w.alive(), w.log()[-3000:]
    s.finish()


def test_writer_paused_past_poll_interval(scenario: Make) -> None:
    """9. A writer SIGSTOPped past max.poll.interval.ms while another takes over, then SIGCONTed."""
    rate = pick(500, 800)
    pause = pick(12, 30)
    settings = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "max.poll.interval.ms": 8000}
    s = scenario("sigstop", dests=[Dest("wh", uid("chaos_db"))], kafka_settings=settings).setup()
    pauses = int(pick(1, 3))
    s.feed(int(rate * (pauses * (pause + pick(8, 20)) + 8)), rate)
    a, b = s.start_writer(), s.start_writer()
    a.wait_assigned(60)
    b.wait_assigned(60)
    for k in range(pauses):
        victim, other = (a, b) if k % 2 == 0 else (b, a)
        s.wait_landed(s.landed() + 500, 90)
        took_over = other.log().count("partitions assigned")
        ev = s.fault(f"SIGSTOP {pause:.0f} s")
        victim.signal(signal.SIGSTOP)
        # the bound on a takeover: the session timeout (6 s), then the other writer's revoke, which drains for
        # up to shutdown_deadline_s (10 s) and may wait that long when the stopped writer holds a row lock one
        # of its replays needs (its table is held: lock_timeout). CI met that once with a 12 s wait.
        wait_for(lambda o=other, n=took_over: o.log().count("partitions assigned") > n, max(pause, 6 + 10 + 6),
                 "the other writer to take over")
        time.sleep(max(0.0, pause - (time.monotonic() - s.events[ev][1])))
        s.audit(f"writer paused #{k + 1}")
        came_back = victim.log().count("partitions assigned")
        victim.signal(signal.SIGCONT)
        s.healed(ev)
        wait_for(lambda v=victim, n=came_back: v.log().count("partitions assigned") > n or not v.alive(), 60,
                 "the paused writer to rejoin")
        assert victim.alive(), victim.log()[-3000:]
        s.audit(f"writer resumed #{k + 1}")
    s.finish()


def test_kill9_during_an_upsert_stream(tmp_path: Path) -> None:
    """10. kill -9 in the middle of an upsert and delete stream over few keys: the table ends exactly as the
    packets say, applied once each in offset order (issue 11), whatever was replayed after each kill."""
    import json as _json

    from confluent_kafka import Producer

    from kapow.contract import CONTEXT_VALUE, make_packet
    from tests.integration import kit

    db, base = uid("chaos_db"), uid("chaos_upsert")
    kit.create_database(db)
    kit.create_topic(f"{base}.in", 6)
    try:
        kit.sql(db, "CREATE TABLE state (id bigint PRIMARY KEY, name text, n bigint, rev bigint)")
        env = kit.Env(topic=f"{base}.in", group=f"{base}.group", user_errors=f"{base}.user",
                      system_errors=f"{base}.system", databases=[db], tmp=tmp_path,
                      destination={"modes": ["insert", "upsert", "delete"]},
                      pipeline={"batch_max_messages": 300, "redrive": False})
        rng = random.Random()
        last: dict[int, dict[str, object] | None] = {}
        producer = Producer({"bootstrap.servers": kit.BOOTSTRAP, "linger.ms": 5, "enable.idempotence": True})
        total = int(pick(30_000, 150_000))
        writer = kit.WriterProcess(env.write_config(), tmp_path / "w0.log")
        kills = 0
        for i in range(total):
            key = rng.randrange(200)
            if rng.random() < 0.15:
                mode, data = "delete", {"id": key}
                last[key] = None
            else:
                mode = "upsert"
                data = {"id": key, "n": i, **({"name": f"s{i}"} if rng.random() < 0.5 else {})}
                before = last.get(key)
                last[key] = {**(before or {"name": None}), **data}
            value = make_packet([{**kit.dest(db, "state"), "mode": mode}], data)
            producer.produce(env.topic, key=str(key).encode(), value=value, headers=[("context", CONTEXT_VALUE)])
            if i % 1000 == 0:
                producer.poll(0)
            if i and i % (total // 4) == 0:  # mid-stream, while the writer works: kill -9, start again
                assert producer.flush(30) == 0
                time.sleep(rng.uniform(0.2, 1.0))
                assert writer.alive(), writer.log()[-3000:]
                writer.kill9()
                kills += 1
                writer = kit.WriterProcess(env.write_config(), tmp_path / f"w{kills}.log")
        assert producer.flush(30) == 0
        ends = kit.end_offsets(env.topic)
        wait_for(lambda: all(kit.committed_offsets(env.group, env.topic).get(p, 0) >= e for p, e in ends.items()),
                 240, "every offset committed")
        assert writer.stop(60) == 0
        got = {r[0]: (r[1], r[2]) for r in kit.sql(db, "SELECT id, name, n FROM state")}
        want = {k: (v["name"], v["n"]) for k, v in last.items() if v is not None}
        assert got == want, f"{sum(got.get(k) != v for k, v in want.items())} keys differ after {kills} kill -9"
        assert kit.read_all(env.user_errors) == [] and kit.read_all(env.system_errors) == []
        print(f"\nCHAOS {_json.dumps({'scenario': 'kill9_upserts', 'sent': total, 'keys': len(want), 'kills': kills})}")
    finally:
        kit.drop_database(db)
        kit.remove_topics([f"{base}.in", f"{base}.user", f"{base}.system", f"{base}.system.done"])
