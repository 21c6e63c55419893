"""Issue #10: ``kapow audit`` against a real writer, broker and database.

A mixed run is audited exactly (landed, filtered, user errors, parked, pending); rows deleted behind KaPoW's back,
and a record past the committed offset that never landed, are reported missing; parked records that were
rescheduled are accounted for through their copies (``kapow-origin``), purged ones as purged; the modes decide
what "landed" means (a later delete makes the row's absence right). The CLI prints a table, ``--json`` one object,
and exits 1 when something is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from kapow.audit import audit
from kapow.config import load_config
from kapow.contract import make_packet
from kapow.deadletter.reader import open_reader
from tests.browser import harness
from tests.integration import kit

pytestmark = pytest.mark.integration

DDL = "CREATE TABLE public.events (id bigint PRIMARY KEY, v text NOT NULL)"


def data_ends(topic: str) -> dict[int, int]:
    """One past the last record of each partition. Not the high watermark: a transactional write (a reschedule)
    ends with a commit marker, which takes an offset that no consumer ever sees or commits past."""
    with open_reader(kit.BOOTSTRAP) as reader:
        ends = dict.fromkeys(reader.partitions(topic) or [], 0)
        for msg in reader.read(topic, reader.watermarks(topic)):
            ends[msg.partition()] = msg.offset() + 1
    return ends


def all_committed(env: kit.Env) -> bool:
    committed = kit.committed_offsets(env.group, env.topic)
    return all(committed.get(p, -1) >= end for p, end in data_ends(env.topic).items() if end > 0)


def commit(env: kit.Env, ends: dict[int, int]) -> None:
    """Commit the group's offsets as a writer would, without one: the audit reads only the packets and these."""
    c = Consumer({"bootstrap.servers": kit.BOOTSTRAP, "group.id": env.group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(env.topic, p, end) for p, end in ends.items()], asynchronous=False)
    finally:
        c.close()


def land(env: kit.Env, writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    """Run a writer until every offset of the topic is committed, then stop it (SIGTERM, exit 0)."""
    w = writers(env)
    w.wait_assigned()
    kit.wait_for(lambda: all_committed(env), 90, "every offset committed")
    assert w.stop() == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kapow", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def counts(report: Any) -> dict[str, int]:
    return {"total": report.total, **report.counts}


def mixed_world(env: kit.Env) -> None:
    db = env.databases[0]
    kit.sql(db, DDL)
    env.extra_destinations = [{"vanity": "vault", "host": "127.0.0.1", "port": harness.dead_port(),
                               "databases": [db], "connect_timeout_s": 1}]
    env.pipeline = {"redrive": False, "hold_s": 0.3, "retry_initial_backoff_s": 0.05}


def test_a_mixed_run_is_audited_exactly_and_deleted_rows_are_missing(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env(partitions=3)
    db = env.databases[0]
    mixed_world(env)
    wh, vault = kit.dest(db, "events"), kit.dest(db, "events", vanity="vault")
    values = [make_packet([wh], {"id": i, "v": "good"}) for i in range(20)]  # landed
    values += [make_packet([wh], {"id": 1000 + i, "v": "x", "nope": 1}) for i in range(4)]  # user errors
    values += [b"{not json"]  # a user error for the packet as a whole (no destination)
    values += [make_packet([vault], {"id": 2000 + i, "v": "p"}) for i in range(3)]  # parked
    values += [make_packet([wh, vault], {"id": 3000 + i, "v": "both"}) for i in range(2)]  # landed + parked
    kit.publish(env.topic, values)
    kit.publish(env.topic, [b"someone else's"] * 5, pipeline=False)  # filtered
    land(env, writers)
    kit.publish(env.topic, [make_packet([wh], {"id": 4000 + i, "v": "late"}) for i in range(3)])  # pending

    config = load_config(env.write_config())
    report = audit(config)
    assert counts(report) == {"total": 38, "filtered": 5, "landed": 20, "user_errors": 5, "parked": 5,
                              "purged": 0, "pending": 3, "missing": 0}
    assert report.ok and report.unverified == 0
    assert sum(p.total for p in report.partitions) == 38 and len(report.partitions) == 3
    assert kit.scalar(db, "SELECT count(*) FROM events WHERE id >= 3000 AND id < 3010") == 2  # landed in wh

    kit.sql(db, "DELETE FROM events WHERE id IN (3, 3001)")  # behind KaPoW's back
    done = run_cli("audit", "-c", str(env.write_config()), "--json")
    assert done.returncode == 1, done.stderr
    assert done.stdout.count("\n") == 1
    body = json.loads(done.stdout)
    assert {k: body[k] for k in ("total", "filtered", "landed", "user_errors", "parked", "pending", "missing")} == {
        "total": 38, "filtered": 5, "landed": 19, "user_errors": 5, "parked": 4, "pending": 3, "missing": 2}
    assert sum(p["missing"] for p in body["partitions"]) == 2
    shown = {(m["partition"], m["offset"]) for m in body["missing_examples"]}
    published = {r.value: (r.partition, r.offset) for r in kit.read_all(env.topic)}
    assert shown == {published[make_packet([wh], {"id": 3, "v": "good"})],
                     published[make_packet([wh, vault], {"id": 3001, "v": "both"})]}
    assert all("row not in the state" in m["why"] for m in body["missing_examples"])

    table = run_cli("audit", "-c", str(env.write_config()))
    assert table.returncode == 1 and "2 MISSING" in table.stdout and "Traceback" not in table.stderr
    assert f"missing {env.topic}[" in table.stdout


def test_a_record_past_the_committed_offset_that_never_landed_is_missing(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env(partitions=2)
    db = env.databases[0]
    kit.sql(db, DDL)
    wh = kit.dest(db, "events")
    kit.publish(env.topic, [make_packet([wh], {"id": i, "v": "good"}) for i in range(6)])
    land(env, writers)
    kit.publish(env.topic, [make_packet([wh], {"id": 100 + i, "v": "never handled"}) for i in range(4)])
    config = load_config(env.write_config())
    before = audit(config)
    assert (before.counts["landed"], before.counts["pending"], before.missing) == (6, 4, 0)

    ends = kit.end_offsets(env.topic)  # the group claims everything is done: nothing of it landed
    commit(env, ends)
    after = audit(config)
    assert (after.counts["landed"], after.counts["pending"], after.missing) == (6, 0, 4)
    assert len(after.missing_examples) == 4


def test_rescheduled_records_count_through_their_copies_and_purged_ones_as_purged(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env(partitions=2)
    db = env.databases[0]
    mixed_world(env)
    vault = kit.dest(db, "events", vanity="vault")
    kit.publish(env.topic, [make_packet([vault], {"id": i, "v": "p"}) for i in range(5)])
    land(env, writers)
    config_path = env.write_config()
    assert audit(load_config(config_path)).counts["parked"] == 5

    listed = run_cli("dlq", "list", "-c", str(config_path), "--json")
    ids = [json.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert len(ids) == 5, listed.stderr
    assert run_cli("dlq", "purge", ids[0], "-c", str(config_path)).returncode == 0
    assert run_cli("dlq", "reschedule", *ids[1:3], "-c", str(config_path)).returncode == 0
    before = audit(load_config(config_path))  # the copies are there, not yet handled: pending
    assert counts(before) == {"total": 7, "filtered": 0, "landed": 0, "user_errors": 0, "parked": 2, "purged": 1,
                              "pending": 4, "missing": 0}

    env.extra_destinations[0]["port"] = kit.PG_PORT  # the vault is back
    land(env, writers)
    report = audit(load_config(env.write_config()))
    assert counts(report) == {"total": 7, "filtered": 0, "landed": 4, "user_errors": 0, "parked": 2, "purged": 1,
                              "pending": 0, "missing": 0}


def test_modes_decide_what_landed_means(make_env: Callable[..., kit.Env], tmp_path: Path) -> None:
    """Insert, then delete of the same key: the row's absence is right for both. Hand-made rows stand in for the
    writer (the modes are the lead's, issue 11): the audit reads the packets and the committed offsets only."""
    env = make_env(partitions=1)
    db = env.databases[0]
    kit.sql(db, DDL)
    wh = kit.dest(db, "events")
    delete = {**wh, "mode": "delete"}
    upsert = {**wh, "mode": "upsert"}
    kit.publish(env.topic, [make_packet([wh], {"id": 1, "v": "a"}), make_packet([delete], {"id": 1}),
                            make_packet([wh], {"id": 2, "v": "b"}), make_packet([upsert], {"id": 2, "v": "c"}),
                            make_packet([wh], {"id": 3, "v": "d"})])
    commit(env, {0: 5})
    kit.sql(db, "INSERT INTO events VALUES (2, 'c'), (3, 'd')")  # as the writer leaves them
    config = load_config(env.write_config())
    assert counts(audit(config)) == {"total": 5, "filtered": 0, "landed": 5, "user_errors": 0, "parked": 0,
                                     "purged": 0, "pending": 0, "missing": 0}
    kit.sql(db, "INSERT INTO events VALUES (1, 'a')")  # the delete did not happen: both records of key 1 missing
    report = audit(config)
    assert (report.counts["landed"], report.missing) == (3, 2)


def test_two_modes_for_one_table_in_one_packet_are_judged_in_the_packet_s_order(
        make_env: Callable[..., kit.Env]) -> None:
    """A hostile run: one packet naming ``[delete, insert]`` of one table left its row there, rightly, but the audit
    reported both destinations missing: they share the record's position, and the "last operation" of the key was
    picked between them at random. The destinations' order in the packet (the order the writer applies them) now
    breaks the tie."""
    env = make_env(partitions=1)
    db = env.databases[0]
    kit.sql(db, DDL)
    wh = kit.dest(db, "events")
    delete = {**wh, "mode": "delete"}
    kit.publish(env.topic, [make_packet([delete, wh], {"id": 42, "v": "del then ins"}),
                            make_packet([wh, delete], {"id": 41, "v": "ins then del"})])
    commit(env, {0: 2})
    kit.sql(db, "INSERT INTO events VALUES (42, 'del then ins')")  # as the writer leaves them
    config = load_config(env.write_config())
    for _ in range(3):  # (the tie was broken by the plan's whim: some runs passed)
        report = audit(config)
        assert (report.counts["landed"], report.missing) == (2, 0), report.missing_examples
    kit.sql(db, "DELETE FROM events WHERE id = 42; INSERT INTO events VALUES (41, 'ins then del')")
    report = audit(config)  # now each packet's last operation did not happen
    assert report.missing == 2 and sorted(m.offset for m in report.missing_examples) == [0, 1]


def test_a_table_with_a_not_null_domain_column_left_out_is_audited(make_env: Callable[..., kit.Env]) -> None:
    """The key values were cut out as a whole row of the table's type, so a NOT NULL domain column the data left out
    was a NULL of the domain and the whole audit failed ("domain ... does not allow null values": a hostile run)."""
    env = make_env(partitions=1)
    db = env.databases[0]
    dom = kit.uid("d")
    kit.sql(db, f"CREATE DOMAIN {dom} AS int NOT NULL; CREATE TABLE events (id bigint PRIMARY KEY, v text,"
                f" dn {dom} DEFAULT 5)")
    wh = kit.dest(db, "events")
    kit.publish(env.topic, [make_packet([wh], {"id": i, "v": "a"}) for i in (1, 2)])
    commit(env, {0: 2})
    kit.sql(db, "INSERT INTO events (id, v) VALUES (1, 'a')")  # as the writer leaves it; id 2 never landed
    report = audit(load_config(env.write_config()))
    assert (report.counts["landed"], report.missing) == (1, 1)


def test_a_row_deleted_by_one_key_and_put_back_by_another_is_not_missing(make_env: Callable[..., kit.Env]) -> None:
    """A delete by ``email``, then an upsert by ``id`` of the same row: the row is there, rightly. Each key was
    judged alone, so the delete was reported missing (a false alarm); the upsert's data gives ``email`` too."""
    env = make_env(partitions=1)
    db = env.databases[0]
    kit.sql(db, "CREATE TABLE public.people (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, v text)")
    wh = kit.dest(db, "people")
    by_email = {**wh, "mode": "delete", "key": ["email"]}
    upsert = {**wh, "mode": "upsert"}
    kit.publish(env.topic, [make_packet([wh], {"id": 1, "email": "x@y", "v": "a"}),
                            make_packet([by_email], {"email": "x@y"}),
                            make_packet([upsert], {"id": 1, "email": "x@y", "v": "b"}),
                            make_packet([wh], {"id": 2, "email": "z@y", "v": "c"}),
                            make_packet([by_email], {"email": "z@y"})])
    commit(env, {0: 5})
    kit.sql(db, "INSERT INTO people VALUES (1, 'x@y', 'b')")  # as the writer leaves them (2 inserted, deleted)
    config = load_config(env.write_config())
    assert counts(audit(config)) == {"total": 5, "filtered": 0, "landed": 5, "user_errors": 0, "parked": 0,
                                     "purged": 0, "pending": 0, "missing": 0}
    kit.sql(db, "INSERT INTO people VALUES (2, 'z@y', 'c')")  # the delete by email of row 2 did not happen
    report = audit(config)
    assert (report.counts["landed"], report.missing) == (4, 1)  # that delete; the insert before it did land
    kit.sql(db, "DELETE FROM people")  # and now row 1, put back by the upsert, is gone too: the upsert is
    report = audit(config)  # missing, and the delete before it (its email is back); rows 1 and 2's inserts are
    assert (report.counts["landed"], report.missing) == (3, 2)  # explained by the deletes by email after them
    assert sorted(m.offset for m in report.missing_examples) == [1, 2]


def test_a_table_of_two_keys_is_judged_without_false_alarms_or_false_landings(make_env: Callable[..., kit.Env]) -> None:
    """A hostile run's cases: a row another key took or put back is not missing, and a row that never landed is
    missing even when another row now holds its email (the first attempt took that for a landing)."""
    env = make_env(partitions=1)
    db = env.databases[0]
    kit.sql(db, "CREATE TABLE public.people (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, v text)")
    wh = kit.dest(db, "people")
    by_email = {**wh, "mode": "delete", "key": ["email"]}
    upsert = {**wh, "mode": "upsert"}
    kit.publish(env.topic, [
        make_packet([wh], {"id": 1, "email": "a", "v": "1"}),  # 0: deleted by email next
        make_packet([by_email], {"email": "a"}),  # 1
        make_packet([wh], {"id": 2, "email": "a", "v": "2"}),  # 2: takes the freed email
        make_packet([upsert], {"id": 2, "email": "b", "v": "2"}),  # 3: and moves on
        make_packet([wh], {"id": 3, "email": "c", "v": "3"}),  # 4: never landed (its offset committed anyway)
        make_packet([wh], {"id": 4, "email": "c", "v": "4"}),  # 5: landed, with the email 4 would have had
        make_packet([wh], {"id": 5, "email": "x", "v": "5"}),  # 6
        make_packet([wh], {"id": 6, "email": "d", "v": "6"}),  # 7: deleted by email next
        make_packet([by_email], {"email": "d"}),  # 8: its email then given by an insert that did nothing:
        make_packet([wh], {"id": 5, "email": "d", "v": "9"}),  # 9: (id 5 was there) unverified, not missing
        make_packet([wh], {"id": 7, "email": "e", "v": "7"}),  # 10: landed
        make_packet([upsert], {"id": 7, "email": "f", "v": "7"}),  # 11: never landed, so 12 did nothing:
        make_packet([wh], {"id": 8, "email": "e", "v": "8"}),  # 12: a row holds its email, but not its id
    ])
    commit(env, {0: 13})
    kit.sql(db, "INSERT INTO people VALUES (2, 'b', '2'), (4, 'c', '4'), (5, 'x', '5'), (7, 'e', '7')")
    report = audit(load_config(env.write_config()))
    # 12 is flagged for 11's loss (a row holding its email is not its row: the first version took it for landed)
    assert (report.total, report.counts["landed"], report.missing) == (13, 11, 2), report
    assert [m.offset for m in report.missing_examples] == [4, 12]


def test_a_version_guard_that_skipped_a_stale_delete_is_not_a_false_alarm(make_env: Callable[..., kit.Env]) -> None:
    """A delete older than the row's version is rightly skipped by its guard: unverified, not missing (a hostile
    run). The same delete without a guard, with the row still there, is missing."""
    env = make_env(partitions=1)
    db = env.databases[0]
    kit.sql(db, "CREATE TABLE public.docs (id bigint PRIMARY KEY, rev int NOT NULL, v text)")
    wh = kit.dest(db, "docs")
    up = {**wh, "mode": "upsert", "version": "rev"}
    stale = {**wh, "mode": "delete", "version": "rev"}
    kit.publish(env.topic, [make_packet([up], {"id": 1, "rev": 5, "v": "new"}),
                            make_packet([stale], {"id": 1, "rev": 3}),  # skipped: rev 3 < 5
                            make_packet([wh], {"id": 2, "rev": 1, "v": "x"}),
                            make_packet([{**wh, "mode": "delete"}], {"id": 2})])  # not done: missing
    commit(env, {0: 4})
    kit.sql(db, "INSERT INTO docs VALUES (1, 5, 'new'), (2, 1, 'x')")
    report = audit(load_config(env.write_config()))
    # the guarded upsert and delete of row 1 are unverified (the guard may have skipped the delete), not missing
    assert (report.total, report.missing, report.unverified) == (4, 2, 2), report
    assert sorted(m.offset for m in report.missing_examples) == [2, 3]  # row 2 should be gone: its insert too


def test_hostile_destination_names_are_audited_as_their_user_errors(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    """A hostile run: a database named with a NUL made the whole audit fail (COPY refuses 0x00), and a table name
    over 256 characters (cut in the error record's kapow-destination) was reported missing, its 50,000
    characters repeated in the report."""
    env = make_env()
    db = env.databases[0]
    kit.sql(db, DDL)
    wh = kit.dest(db, "events")
    values = [make_packet([wh], {"id": 1, "v": "good"}),
              make_packet([{**wh, "database": db + "\u0000"}], {"id": 2, "v": "nul"}),
              make_packet([{**wh, "table": "t" * 50_000}], {"id": 3, "v": "long"}),
              make_packet([wh, {**wh, "table": "e\u0000" * 200}], {"id": 4, "v": "both"})]
    kit.publish(env.topic, values)
    land(env, writers)
    done = run_cli("audit", "-c", str(env.write_config()), "--json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    body = json.loads(done.stdout)
    assert {k: body[k] for k in ("total", "landed", "user_errors", "missing")} == {
        "total": 4, "landed": 1, "user_errors": 3, "missing": 0}, body  # (a packet with any user error is one)
    assert len(done.stdout) < 20_000
    assert kit.scalar(db, "SELECT count(*) FROM events WHERE id IN (1, 4)") == 2
