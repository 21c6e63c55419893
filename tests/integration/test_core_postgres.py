"""The database half of the core, in this process, against the real PostgreSQL: apply, isolate, write a unit, lanes.

These call :func:`kapow.postgres.writer.apply_unit`, :func:`kapow.postgres.isolate.isolate`,
:func:`kapow.pipeline.unit.write_unit` and a :class:`~kapow.pipeline.lane.DatabaseLane` with its real pool
directly, without a writer process: each test takes a second or less, and mutation testing (``make mutation``)
can see which of them runs which function (it cannot see into a child process). What the writer process does
with the same code end to end is in the other integration tests.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import psycopg
import pytest
from confluent_kafka import Message

from kapow.config import parse_config
from kapow.contract import Destination, Metadata, TableKey
from kapow.errors import ErrorCode, Scope
from kapow.pipeline.lane import DatabaseLane
from kapow.pipeline.route import route_specs
from kapow.pipeline.unit import PLAIN_PAUSE_S, JobOutcome, TableJob, write_unit
from kapow.pipeline.work import Row, TableWork, WorkResult
from kapow.postgres.catalog import _CATALOG_SQL, Catalog, Table, load_tables
from kapow.postgres.isolate import EACH_MAX, IsolationAborted, isolate
from kapow.postgres.statements import RowIn, plan, plan_last_wins
from kapow.postgres.writer import apply_unit, configure_connection, copy_text
from tests.integration import kit

pytestmark = pytest.mark.integration

ITEMS = """
CREATE TABLE {name} (
    id    bigint PRIMARY KEY,
    name  varchar(20) NOT NULL,
    qty   integer NOT NULL CHECK (qty >= 0),
    note  text,
    extra text
)
"""


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with kit.scratch_database("kcore") as name:
        yield name


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(kit.dsn(db)) as c:
        configure_connection(c, statement_timeout_ms=10_000, lock_timeout_ms=300)
        yield c


def new_table(db: str, ddl: str = ITEMS) -> str:
    return kit.new_table(db, ddl)


def table_of(conn: psycopg.Connection[Any], name: str) -> Table:
    table = load_tables(conn, [("public", name)])[("public", name)]
    assert table is not None
    return table


def dest(db: str, table: str, mode: str = "insert", **kw: Any) -> Destination:
    return Destination("wh", db, table, mode=mode, **kw)


def row_in(d: Destination, data: dict[str, Any], *, view: bool = False) -> RowIn:
    """A row; ``view``: its document a :class:`msgspec.Raw` view, as sort files a packet's ``data``."""
    doc = msgspec.json.encode(data)
    return RowIn(msgspec.Raw(doc) if view else doc, tuple(data), d)


def good(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"item {i}", "qty": i % 5}


def expected_probes(n: int, bad: set[int]) -> int:
    """The statements a bisection of ``n`` elements with ``bad`` ones spends: every range tried once, a failing
    range of more than EACH_MAX elements split in halves, a failing range of 2 to EACH_MAX applied element by
    element in one call (the algorithm of kapow.postgres.isolate, stated again)."""

    def tries(lo: int, hi: int) -> int:
        fails = any(lo <= b < hi for b in bad)
        if not fails or hi - lo == 1:
            return 1
        if hi - lo <= EACH_MAX:
            return 2
        mid = (lo + hi) // 2
        return 1 + tries(lo, mid) + tries(mid, hi)

    return tries(0, n)


# ---------------------------------------------------------------------------------------------------- writer.py


def test_a_connection_is_configured_once_with_its_timeouts(db: str) -> None:
    with psycopg.connect(kit.dsn(db)) as c:
        configure_connection(c, statement_timeout_ms=1234, lock_timeout_ms=567)
        assert c.autocommit
        assert c.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert c.execute("SHOW lock_timeout").fetchone() == ("567ms",)
        assert c.execute("SHOW client_connection_check_interval").fetchone() == ("1s",)
        assert c.execute("SELECT count(*) FROM pg_proc WHERE proname = 'kapow_apply'").fetchone() == (1,)


def test_a_catalog_read_of_many_names_is_never_compiled(db: str) -> None:
    """JIT compiled a unit's catalog read of 10,000 unknown names: 1.8 s of its 2.1 (a flood of ever-new names)."""
    names = [f"nosuch_{i}" for i in range(10_000)]
    with psycopg.connect(kit.dsn(db)) as c:
        configure_connection(c, statement_timeout_ms=10_000, lock_timeout_ms=300)
        plan = c.execute(b"EXPLAIN " + _CATALOG_SQL.encode(), (["public"] * len(names), names)).fetchall()
        assert not [line for (line,) in plan if line.startswith("JIT")]
        assert set(load_tables(c, [("public", n) for n in names]).values()) == {None}


def test_a_catalog_read_looks_for_no_index_of_a_table_that_does_not_exist(db: str) -> None:
    """pg_index was scanned once per unknown name (0.04 ms each here, more on a database of many indexes): 10,000
    names a unit spent 0.45 s of its catalog read looking for indexes of tables that are not there."""
    names = [f"nosuch_{i}" for i in range(100)]
    with psycopg.connect(kit.dsn(db), autocommit=True) as c:
        plan = [line for (line,) in c.execute(b"EXPLAIN (ANALYZE, COSTS OFF) " + _CATALOG_SQL.encode(),
                                              (["public"] * len(names), names)).fetchall()]
    scans = [line for line in plan if " on pg_index " in line]
    assert scans and all("never executed" in line for line in scans), plan


def test_apply_unit_fences_each_table_and_counts_each_statement(db: str, conn: psycopg.Connection[Any]) -> None:
    a, b, c = new_table(db), new_table(db), new_table(db)
    kit.sql(db, f"INSERT INTO {a} VALUES (1, 'old', 1)")
    ta, tb, tc = table_of(conn, a), table_of(conn, b), table_of(conn, c)
    rows_a = [row_in(dest(db, a), good(i)) for i in range(4)] + [row_in(dest(db, a), {"id": 9, "name": "n", "qty": 1,
                                                                                     "note": "x"})]
    rows_b = [row_in(dest(db, b), good(1)), row_in(dest(db, b), {"id": 2, "name": "n", "qty": -1})]
    rows_c = [row_in(dest(db, c), {"id": 1, "name": "n"})]  # qty is NOT NULL: the server names the column
    outcomes = apply_unit(conn, [plan(ta, rows_a, {}), plan(tb, rows_b, {}), plan(tc, rows_c, {})])
    assert len(outcomes) == 3
    assert outcomes[0].failure is None and outcomes[0].affected == [3, 1]  # id 1 was there: a no-op
    assert outcomes[1].affected == [] and outcomes[1].failure is not None
    assert (outcomes[1].failure.code, outcomes[1].failure.scope) == (ErrorCode.CONSTRAINT_VIOLATION, Scope.ROW)
    assert "check constraint" in outcomes[1].failure.message and outcomes[1].column is None
    assert outcomes[2].failure is not None and outcomes[2].failure.code is ErrorCode.MISSING_COLUMN
    assert outcomes[2].column == "qty"
    assert kit.scalar(db, f"SELECT count(*) FROM {a}") == 5
    assert kit.scalar(db, f"SELECT name FROM {a} WHERE id = 1") == "old"  # insert: a replay changes nothing
    assert kit.scalar(db, f"SELECT count(*) FROM {b}") == 0, "the good row of a failed table landed alone"
    assert apply_unit(conn, []) == []
    with psycopg.connect(kit.dsn(db)) as locker:
        locker.execute(f"LOCK TABLE {c} IN ACCESS EXCLUSIVE MODE".encode())
        (locked,) = apply_unit(conn, [plan(tc, [row_in(dest(db, c), good(5))], {})])
        locker.rollback()
    assert locked.failure is not None and (locked.failure.code, locked.failure.scope) == (ErrorCode.TIMEOUT,
                                                                                          Scope.TABLE)


def test_inserts_are_tried_plain_and_a_duplicate_applies_the_table_again_on_conflict(
        db: str, conn: psycopg.Connection[Any]) -> None:
    """Plain INSERTs first (no speculative insertion); a duplicate rolls the table back to its fence and applies it
    again with ON CONFLICT DO NOTHING: the same rows land as if ON CONFLICT had been used from the start."""
    there, inside, fresh, checked = new_table(db), new_table(db), new_table(db), new_table(db)
    kit.sql(db, f"INSERT INTO {there} VALUES (1, 'old', 1)")
    kit.sql(db, f"INSERT INTO {checked} VALUES (1, 'old', 1)")
    t_there, t_inside, t_fresh, t_checked = (table_of(conn, n) for n in (there, inside, fresh, checked))
    rows_there = [row_in(dest(db, there), good(i)) for i in range(4)]
    rows_inside = [row_in(dest(db, inside), good(i)) for i in range(3)] + [
        row_in(dest(db, inside), {"id": 1, "name": "second", "qty": 2})]
    rows_fresh = [row_in(dest(db, fresh), good(i)) for i in range(5)]
    rows_checked = [row_in(dest(db, checked), good(1)), row_in(dest(db, checked), {"id": 2, "name": "n", "qty": -1})]
    plans = [plan(t_there, rows_there, {}), plan(t_inside, rows_inside, {}), plan(t_fresh, rows_fresh, {}),
             plan(t_checked, rows_checked, {})]
    out = apply_unit(conn, plans, [True, True, True, True])
    assert [(o.affected, o.conflicted, o.failure) for o in out[:3]] == [([3], True, None), ([3], True, None),
                                                                        ([5], False, None)]
    assert kit.scalar(db, f"SELECT name FROM {there} WHERE id = 1") == "old"
    assert kit.scalar(db, f"SELECT name FROM {inside} WHERE id = 1") == "item 1", "the first of two duplicates wins"
    assert [kit.scalar(db, f"SELECT count(*) FROM {n}") for n in (there, inside, fresh)] == [4, 3, 5]
    # a duplicate, then a bad row: applied again, and the bad row's failure is what the table reports
    assert out[3].conflicted and out[3].failure is not None and out[3].failure.code is ErrorCode.CONSTRAINT_VIOLATION
    assert kit.scalar(db, f"SELECT count(*) FROM {checked}") == 1
    # not tried plain: nothing to apply again
    (again,) = apply_unit(conn, [plan(t_there, [row_in(dest(db, there), good(i)) for i in range(6)], {})], [False])
    assert (again.affected, again.conflicted) == ([2], False)
    (default,) = apply_unit(conn, [plan(t_there, [row_in(dest(db, there), good(6))], {})])
    assert (default.affected, default.conflicted) == ([1], False), "plain inserts are asked for, never assumed"


def test_apply_unit_is_one_transaction(db: str, conn: psycopg.Connection[Any]) -> None:
    """Two tables in one unit commit together: another session never sees one without the other."""
    a, b = new_table(db), new_table(db)
    kit.sql(db, f"CREATE FUNCTION {b}_seen() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"PERFORM pg_sleep(0.3); RETURN NEW; END $$; CREATE TRIGGER slow BEFORE INSERT ON {b} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {b}_seen()")
    ta, tb = table_of(conn, a), table_of(conn, b)
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append((kit.scalar(db, f"SELECT count(*) FROM {a}"), kit.scalar(db, f"SELECT count(*) FROM {b}")))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        apply_unit(conn, [plan(ta, [row_in(dest(db, a), good(1))], {}), plan(tb, [row_in(dest(db, b), good(1))], {})])
    finally:
        done.set()
        watcher.join()
    assert (1, 0) not in seen, "table a was visible before table b's statement ended"
    assert kit.scalar(db, f"SELECT count(*) FROM {b}") == 1


# ---------------------------------------------------------------------------------------------------- isolate.py


@pytest.mark.parametrize(("n", "bad"), [(1, {0}), (2, {1}), (7, {0, 6}), (1000, {17, 500, 998}),
                                        (1000, set(range(0, 1000, 3)))])
def test_isolate_bisects_to_the_bad_rows_and_spends_the_probes_a_bisection_does(
        db: str, conn: psycopg.Connection[Any], n: int, bad: set[int]) -> None:
    name = new_table(db)
    table = table_of(conn, name)
    rows = []
    for i in range(n):
        data = good(i)
        if i in bad:
            data["qty"] = "many" if i % 2 == 0 else -i  # a value the column refuses, or a CHECK violation
        rows.append(row_in(dest(db, name), data, view=i % 4 == 0))  # views and bytes, bad ones among both
    statements = plan(table, rows, {})
    result = isolate(conn, table, statements, rows)
    assert sorted(i for i, _f in result.failures) == sorted(bad)
    for i, f in result.failures:
        if i % 2 == 0:
            assert f.code is ErrorCode.BAD_VALUE
            assert f.message.startswith("column qty (integer): invalid input syntax"), f.message
        else:
            assert f.code is ErrorCode.CONSTRAINT_VIOLATION
            assert f.message.startswith(f'new row for relation "{name}" violates check constraint'), f.message
    assert result.affected == n - len(bad) and result.landed_sources == n - len(bad)
    assert result.probes == expected_probes(n, bad)
    assert result.probes <= 1 + 2 * len(bad) * math.ceil(math.log2(max(n, 2))), "not a bisection"
    # dense bad rows (a hostile stream of bad values): a few dozen statements, not two a bad row
    assert len(bad) < 100 or result.probes <= 4 * n // EACH_MAX, result.probes
    assert kit.scalar(db, f"SELECT count(*) FROM {name}") == n - len(bad)


def test_isolate_counts_replays_as_landed_sources_not_affected_rows(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    kit.sql(db, f"INSERT INTO {name} VALUES (0, 'there', 1)")
    table = table_of(conn, name)
    rows = [row_in(dest(db, name), good(0)), row_in(dest(db, name), {"id": 1, "name": "n", "qty": "x"}),
            row_in(dest(db, name), good(2))]
    result = isolate(conn, table, plan(table, rows, {}), rows)
    assert (result.affected, result.landed_sources, [i for i, _ in result.failures]) == (1, 2, [1])


def test_a_folded_upsert_is_unfolded_so_only_the_bad_packet_fails(db: str, conn: psycopg.Connection[Any]) -> None:
    # every column nullable: a partial upsert is valid (NOT NULL is checked before ON CONFLICT looks for the row)
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, name text, qty int CHECK (qty >= 0), note text)")
    table = table_of(conn, name)
    up = dest(db, name, "upsert")
    rows = [row_in(up, {"id": 1, "name": "first", "qty": 1}), row_in(up, {"id": 1, "qty": -5}),
            row_in(up, {"id": 1, "note": "later"}), row_in(up, {"id": 2, "name": "two", "qty": 2})]
    statements = plan(table, rows, dict.fromkeys(range(4), ("id",)))
    assert len(statements) == 3  # a round per operation of key 1 (folding hid a refused value)
    result = isolate(conn, table, statements, rows)
    assert [(i, f.code) for i, f in result.failures] == [(1, ErrorCode.CONSTRAINT_VIOLATION)]
    assert kit.sql(db, f"SELECT id, name, qty, note FROM {name} ORDER BY id") == [(1, "first", 1, "later"),
                                                                                  (2, "two", 2, None)]


def test_a_folded_pair_beside_a_good_row_in_one_statement_is_unfolded_and_the_rest_still_lands(
        db: str, conn: psycopg.Connection[Any]) -> None:
    # only a repeated delete folds now: two deletes of one bad key text are one element, unfolded when it fails
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, name text, qty int CHECK (qty >= 0))")
    kit.sql(db, f"INSERT INTO {name} VALUES (2, 'c', 2)")
    table = table_of(conn, name)
    gone = dest(db, name, "delete")
    rows = [row_in(gone, {"id": "x"}), row_in(gone, {"id": "x"}), row_in(gone, {"id": 2})]
    statements = plan(table, rows, dict.fromkeys(range(3), ("id",)))
    assert [[e.sources for e in s.elements] for s in statements] == [[[0, 1], [2]]]  # the premise
    result = isolate(conn, table, statements, rows)
    assert [(i, f.code) for i, f in result.failures] == [(0, ErrorCode.BAD_VALUE), (1, ErrorCode.BAD_VALUE)]
    assert kit.sql(db, f"SELECT id FROM {name}") == []


def test_a_not_null_failure_names_its_column_from_the_server(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    table = table_of(conn, name)
    rows = [row_in(dest(db, name), good(1)), row_in(dest(db, name), {"id": 2, "name": "n", "qty": None})]
    result = isolate(conn, table, plan(table, rows, {}), rows)
    ((index, failure),) = result.failures
    assert index == 1 and failure.code is ErrorCode.MISSING_COLUMN
    assert failure.message.startswith("column qty: "), failure.message


NULLABLE_KEYS = ("CREATE TABLE {name} (id bigserial PRIMARY KEY, email text UNIQUE, code text, part int, note text,"
                 " UNIQUE (code, part))")


def notes(db: str, name: str) -> list[str]:
    return [n for (n,) in kit.sql(db, f"SELECT note FROM {name} ORDER BY note")]


def test_an_insert_whose_unique_key_is_null_is_refused_so_a_replay_adds_nothing(
        db: str, conn: psycopg.Connection[Any]) -> None:
    # PostgreSQL lets nulls repeat in a unique column: an insert whose only key was null landed again at every
    # replay (a crash, a rebalance), so the guarantee of no duplicates held only for keys that cannot be null
    name = new_table(db, NULLABLE_KEYS)
    table = table_of(conn, name)
    ins = dest(db, name)
    rows = [row_in(ins, {"email": "a@x", "note": "1"}), row_in(ins, {"email": None, "note": "2"}),
            row_in(ins, {"email": None, "code": "c", "part": 1, "note": "3"}),  # its other key is given: lands
            row_in(ins, {"email": None, "code": "c", "part": None, "note": "4"})]  # neither is: refused
    for _ in range(2):  # the second time is the replay
        statements = plan(table, rows, {})
        assert [copy_text(table, s) for s in statements] == [None, None]  # COPY could not refuse it
        (outcome,) = apply_unit(conn, [statements], [True])
        assert outcome.failure is not None and outcome.failure.code is ErrorCode.MISSING_KEY
        result = isolate(conn, table, plan(table, rows, {}), rows)
        assert [(i, f.code, f.scope) for i, f in result.failures] == [(1, ErrorCode.MISSING_KEY, Scope.ROW),
                                                                      (3, ErrorCode.MISSING_KEY, Scope.ROW)]
        assert notes(db, name) == ["1", "3"]
    (one, two) = (f.message for _i, f in result.failures)
    assert one.startswith("column email: insert's unique key of public.") and "(email)" in one, one
    assert "(email); (code, part)" in two and "replay" in two and "allow_no_unique_key" in two, two
    assert "\n" not in one + two
    # allow_no_unique_key: the client accepts that a replay duplicates such rows
    loose = plan(table, rows, {}, nulls_ok=True)
    assert copy_text(table, loose[0]) is not None
    (outcome,) = apply_unit(conn, [loose], [True])
    assert outcome.failure is None and notes(db, name) == ["1", "2", "3", "4"]


def test_an_upsert_or_delete_by_a_null_key_is_refused_not_added_or_ignored(
        db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db, NULLABLE_KEYS)
    kit.sql(db, f"INSERT INTO {name} (email, note) VALUES ('a@x', 'old')")
    table = table_of(conn, name)
    up, gone = dest(db, name, "upsert", key=("email",)), dest(db, name, "delete", key=("email",))
    rows = [row_in(up, {"email": None, "note": "n1"}), row_in(up, {"email": "a@x", "note": "new"}),
            row_in(up, {"email": "b@x", "note": "b"})]
    for statements in (plan_last_wins(table, rows, ("email",)), plan(table, rows, dict.fromkeys(range(3), ("email",)))):
        assert statements is not None
        result = isolate(conn, table, statements, rows)
        assert [(i, f.code) for i, f in result.failures] == [(0, ErrorCode.MISSING_KEY)]  # not a new row each time
        assert result.failures[0][1].message.startswith("column email: upsert key (email) of public."), result
        assert notes(db, name) == ["b", "new"]
    empty = new_table(db, NULLABLE_KEYS)  # a table with no row to match: the delete is refused all the same
    alone = [row_in(dest(db, empty, "delete", key=("email",)), {"email": None})]
    result = isolate(conn, table_of(conn, empty), plan(table_of(conn, empty), alone, {0: ("email",)}), alone)
    assert [(i, f.code) for i, f in result.failures] == [(0, ErrorCode.MISSING_KEY)]
    deletes = [row_in(gone, {"email": None}), row_in(gone, {"email": "b@x"})]
    result = isolate(conn, table, plan(table, deletes, dict.fromkeys(range(2), ("email",))), deletes)
    assert [(i, f.code) for i, f in result.failures] == [(0, ErrorCode.MISSING_KEY)]  # not silently nothing
    assert "delete key (email)" in result.failures[0][1].message and notes(db, name) == ["new"]


def test_a_null_is_a_key_under_unique_nulls_not_distinct(db: str, conn: psycopg.Connection[Any]) -> None:
    # a hostile run: such an index makes a null a real key (a replay conflicts), yet it was refused as missing_key
    if conn.info.server_version < 150000:
        pytest.skip("UNIQUE NULLS NOT DISTINCT is PostgreSQL 15's")
    name = new_table(db, "CREATE TABLE {name} (id bigserial PRIMARY KEY, email text UNIQUE NULLS NOT DISTINCT,"
                         " note text)")
    table = table_of(conn, name)
    assert table.null_keys == frozenset({("email",)})
    rows = [row_in(dest(db, name), {"email": None, "note": "1"})]
    for _ in range(2):  # the second time is the replay: it conflicts on the null, nothing is added
        (outcome,) = apply_unit(conn, [plan(table, rows, {})], [True])
        assert outcome.failure is None, outcome.failure
    assert notes(db, name) == ["1"]
    up = dest(db, name, "upsert", key=("email",))
    ups = [row_in(up, {"email": None, "note": "2"})]
    (outcome,) = apply_unit(conn, [plan(table, ups, {0: ("email",)})])
    assert outcome.failure is None and notes(db, name) == ["2"]
    gone = [row_in(dest(db, name, "delete", key=("email",)), {"email": None})]
    (outcome,) = apply_unit(conn, [plan(table, gone, {0: ("email",)})])
    assert outcome.failure is None and outcome.affected == [1] and notes(db, name) == []


def test_a_primary_key_needs_no_null_guard(db: str, conn: psycopg.Connection[Any]) -> None:
    # NOT NULL makes a null key impossible: nearly every table pays nothing for the guard, and keeps its COPY
    name = new_table(db)
    table = table_of(conn, name)
    statements = plan(table, [row_in(dest(db, name), good(1))], {})
    assert "kapow_refuse" not in statements[0].text + str(statements[0].plain)
    assert copy_text(table, statements[0]) is not None
    # ... but a delete by a null id would match nothing and count as done (a hostile run): it is refused
    kit.sql(db, f"INSERT INTO {name} VALUES (1, 'a', 1)")
    gone = dest(db, name, "delete")
    deletes = [row_in(gone, {"id": None}), row_in(gone, {"id": 1})]
    result = isolate(conn, table, plan(table, deletes, dict.fromkeys(range(2), ("id",))), deletes)
    assert [(i, f.code) for i, f in result.failures] == [(0, ErrorCode.MISSING_KEY)]
    assert kit.scalar(db, f"SELECT count(*) FROM {name}") == 0


def test_a_bad_value_in_a_column_that_comes_late_is_named(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, a int, b date, c int)")
    table = table_of(conn, name)
    rows = [row_in(dest(db, name), {"id": 1, "a": 1, "b": "2020-01-01", "c": "x"})]
    ((_i, failure),) = isolate(conn, table, plan(table, rows, {}), rows).failures
    assert failure.message.startswith("column c (integer): "), failure.message


def test_a_bad_value_names_the_type_the_column_has_now_not_the_one_cached(
        db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, qty text)")
    table = table_of(conn, name)  # read while qty is text
    kit.sql(db, f"ALTER TABLE {name} ALTER COLUMN qty TYPE integer USING qty::integer")
    rows = [row_in(dest(db, name), {"id": 1, "qty": "abc"})]
    ((_i, failure),) = isolate(conn, table, plan(table, rows, {}), rows).failures
    assert failure.message.startswith("column qty (integer): "), failure.message


def test_isolation_stops_at_a_locked_table_and_says_why(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    table = table_of(conn, name)
    rows = [row_in(dest(db, name), good(1)), row_in(dest(db, name), {"id": 2, "name": "n", "qty": "x"})]
    with psycopg.connect(kit.dsn(db)) as locker:
        locker.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE".encode())
        with pytest.raises(IsolationAborted) as aborted:
            isolate(conn, table, plan(table, rows, {}), rows)
        locker.rollback()
    assert (aborted.value.failure.code, aborted.value.failure.scope) == (ErrorCode.TIMEOUT, Scope.TABLE)
    assert str(aborted.value) == aborted.value.failure.message and "lock" in str(aborted.value)
    assert kit.scalar(db, f"SELECT count(*) FROM {name}") == 0
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_isolation_on_a_closed_connection_is_the_database_failing(db: str) -> None:
    c = psycopg.connect(kit.dsn(db))
    configure_connection(c, statement_timeout_ms=10_000, lock_timeout_ms=300)
    name = new_table(db)
    table = table_of(c, name)
    rows = [row_in(dest(db, name), good(1))]
    c.close()
    with pytest.raises(IsolationAborted) as aborted:
        isolate(c, table, plan(table, rows, {}), rows)
    assert aborted.value.failure.scope is Scope.DATABASE
    assert aborted.value.failure.code is ErrorCode.DATABASE_UNAVAILABLE
    assert aborted.value.failure.message == "the connection is closed", aborted.value.failure.message


def test_a_connection_lost_while_isolating_is_the_database_s_failure(db: str, conn: psycopg.Connection[Any]) -> None:
    """The first probe's statement ends its own session: the isolation stops, charged to the database."""
    name = new_table(db)
    kit.sql(db, f"CREATE SEQUENCE {name}_calls; CREATE FUNCTION {name}_f() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN IF nextval('{name}_calls') = 1 THEN RAISE EXCEPTION 'bad row' USING ERRCODE = '23514';"
                f" END IF; PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;"
                f"CREATE TRIGGER f BEFORE INSERT ON {name} FOR EACH STATEMENT EXECUTE FUNCTION {name}_f()")
    table = table_of(conn, name)
    rows = [row_in(dest(db, name), good(1)), row_in(dest(db, name), good(2))]
    (outcome,) = apply_unit(conn, [plan(table, rows, {})])
    assert outcome.failure is not None and outcome.failure.scope is Scope.ROW  # the premise: a row's error
    with pytest.raises(IsolationAborted) as aborted:
        isolate(conn, table, plan(table, rows, {}), rows)
    assert aborted.value.failure.scope is Scope.DATABASE, aborted.value.failure


# ---------------------------------------------------------------------------------------------------- unit.py

CONFIG = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                      '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\nmodes = ["insert", "upsert", "delete"]\n'
                      '[pipeline]\nhold_s = 60\nretry_initial_backoff_s = 0.01\nretry_max_backoff_s = 0.05\n'
                      'circuit_failures_to_open = 2\ncircuit_open_s = 0.1\n')
WH = CONFIG.destinations[0]
_offsets = iter(range(10_000_000))


def msg(value: bytes = b"{}", key: bytes | None = None, *, partition: int = 0) -> Message:
    return Message(topic="in", partition=partition, offset=next(_offsets), key=key, value=value,
                   timestamp=(1, 1_700_000_000_123))


def packet_row(d: Destination, data: dict[str, Any]) -> Row:
    doc = msgspec.json.encode(data)
    return Row(msg(doc), doc, tuple(data), d)


def job(db: str, table: str, *works: list[Row], attempts: int = 0) -> TableJob:
    key = TableKey("wh", db, "public", table)
    made = []
    for n, rows in enumerate(works):
        w = TableWork(key, WH, rows, n + 1, 10 * len(rows), enqueued_at=time.monotonic(), attempts=attempts)
        made.append(w)
    return TableJob(key, WH, made)


def results(outcome: JobOutcome) -> list[tuple[int, int, list[str]]]:
    assert outcome.failure is None, outcome.failure
    assert outcome.results is not None
    return [(r.landed, r.duplicates, [rec.failure.code.value for rec in r.failed]) for r in outcome.results]


def test_a_unit_writes_many_tables_and_answers_each_work(db: str, conn: psycopg.Connection[Any]) -> None:
    a, b = new_table(db), new_table(db)
    kit.sql(db, f"INSERT INTO {a} VALUES (0, 'there', 1)")
    catalog = Catalog()
    ja = job(db, a, [packet_row(dest(db, a), good(0)), packet_row(dest(db, a), good(1))],
             [packet_row(dest(db, a), {"id": 3, "name": "n", "qty": 1, "nope": 1}), packet_row(dest(db, a), good(2))])
    jb = job(db, b, [packet_row(dest(db, b), good(1)), packet_row(dest(db, b), {"id": 2, "name": "n", "qty": -1})])
    missing = job(db, "no_such_table", [packet_row(dest(db, "no_such_table"), good(1))])
    for w in ja.works:
        w.enqueued_at -= 5  # queued five seconds ago
    out = write_unit(conn, catalog, [missing, ja, jb])
    assert [o.job for o in out] == [missing, ja, jb]
    # b's bad row is not bisected in a unit with other tables (they would wait for it): b goes back, alone
    assert out[2].alone and out[2].failure is not None and out[2].failure.scope is Scope.ROW
    assert kit.scalar(db, f"SELECT count(*) FROM {b}") == 0
    out[2] = write_unit(conn, catalog, [jb])[0]
    assert not out[2].alone
    out = [out[1], out[2], out[0]]
    assert results(out[0]) == [(1, 1, []), (1, 0, ["unknown_column"])]
    assert out[0].results is not None and out[0].results[1].failed[0].destination == dest(db, a)
    assert all(5 <= r.seconds < 60 for r in out[0].results)
    assert results(out[1]) == [(1, 0, ["constraint_violation"])]
    assert results(out[2]) == [(0, 0, ["unknown_table"])]
    assert out[1].results is not None and out[1].results[0].probes == expected_probes(2, {1})
    assert out[1].results[0].failed[0].destination == dest(db, b), "a failed record names its destination"
    assert out[0].results is not None and out[0].results[0].probes == 0
    assert all(r.attempts == 1 and r.seconds >= 0 for o in out for r in o.results or [])
    assert kit.scalar(db, f"SELECT count(*) FROM {a}") == 3 and kit.scalar(db, f"SELECT count(*) FROM {b}") == 1
    assert catalog.get(TableKey("wh", db, "public", "no_such_table")) == (True, None)


def test_a_table_whose_plain_inserts_met_a_duplicate_writes_on_conflict_for_a_while(
        db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    key = TableKey("wh", db, "public", name)
    catalog = Catalog()
    write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(0))])])
    _, table = catalog.get(key)
    assert table is not None and table.plain_from == 0.0, "a new table's inserts are tried plain"
    before = time.monotonic()
    out = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(0)),
                                                    packet_row(dest(db, name), good(1))])])
    assert results(out[0]) == [(1, 1, [])]
    assert before + PLAIN_PAUSE_S <= table.plain_from <= time.monotonic() + PLAIN_PAUSE_S
    paused = table.plain_from = time.monotonic() + 30  # still paused: the next duplicate is not met plain
    out = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(1)),
                                                    packet_row(dest(db, name), good(2))])])
    assert results(out[0]) == [(1, 1, [])] and table.plain_from == paused
    table.plain_from = time.monotonic()  # the pause is over: plain again, and the next duplicate pauses it again
    out = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(2))])])
    assert results(out[0]) == [(0, 1, [])] and table.plain_from > time.monotonic() + PLAIN_PAUSE_S - 5


def test_a_table_locked_past_its_timeout_fails_its_job_and_not_the_unit(db: str,
                                                                       conn: psycopg.Connection[Any]) -> None:
    a, b = new_table(db), new_table(db)
    catalog = Catalog()
    ja = job(db, a, [packet_row(dest(db, a), good(1))])
    jb = job(db, b, [packet_row(dest(db, b), good(1))])
    write_unit(conn, catalog, [job(db, a, [packet_row(dest(db, a), good(0))])])  # the catalog knows a
    with psycopg.connect(kit.dsn(db)) as locker:
        locker.execute(f"LOCK TABLE {a} IN ACCESS EXCLUSIVE MODE".encode())
        out = write_unit(conn, catalog, [ja, jb])
        locker.rollback()
    assert out[0].results is None and out[0].failure is not None
    assert (out[0].failure.code, out[0].failure.scope) == (ErrorCode.TIMEOUT, Scope.TABLE)
    assert results(out[1]) == [(1, 0, [])]


def test_a_column_added_is_believed_once_the_catalog_entry_is_a_second_old(db: str,
                                                                         conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    key = TableKey("wh", db, "public", name)
    catalog = Catalog()
    write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(0))])])
    kit.sql(db, f"ALTER TABLE {name} ADD COLUMN colour text")
    fresh = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), {**good(1), "colour": "red"})])])
    assert results(fresh[0]) == [(0, 0, ["unknown_column"])], "an entry younger than a second is believed"
    table, at, size = catalog._entries[key]
    catalog._entries[key] = (table, at - 1.5, size)  # the entry is now a second and a half old
    out = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), {**good(2), "colour": "red"})])])
    assert results(out[0]) == [(1, 0, [])]
    assert kit.scalar(db, f"SELECT colour FROM {name} WHERE id = 2") == "red"
    at_once = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), {**good(3), "colour": "b"})])])
    assert results(at_once[0]) == [(1, 0, [])], "the fresh shape read for the recheck was not kept"
    table, at, size = catalog._entries[key]
    catalog._entries[key] = (table, at - 1.5, size)
    write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(4))])])
    assert catalog.age(key) >= 1.5, "a shape that answered was read again: only a schema failure rereads it"


def test_a_catalog_whose_entries_expire_at_once_reads_the_table_every_time(db: str,
                                                                           conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    catalog = Catalog(ttl=0.0)
    for i in range(2):
        out = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(i))])])
        assert results(out[0]) == [(1, 0, [])]


def test_a_table_created_after_a_miss_is_seen_a_second_later(db: str, conn: psycopg.Connection[Any]) -> None:
    name = f"late_{kit.uid('t')[2:]}"
    key = TableKey("wh", db, "public", name)
    catalog = Catalog()
    assert results(write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(0))])])[0]) == [
        (0, 0, ["unknown_table"])]
    kit.sql(db, ITEMS.format(name=name))
    again = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(1))])])
    assert results(again[0]) == [(0, 0, ["unknown_table"])], "a miss younger than a second is believed"
    _table, at, size = catalog._entries[key]
    catalog._entries[key] = (None, at - 1.5, size)
    out = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(2))])])
    assert results(out[0]) == [(1, 0, [])]


def test_a_column_dropped_under_the_writer_holds_the_table_once_then_fails_only_its_rows(
        db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    catalog = Catalog()
    write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), {**good(0), "extra": "e"})])])
    kit.sql(db, f"ALTER TABLE {name} DROP COLUMN extra")
    rows = [packet_row(dest(db, name), good(1)), packet_row(dest(db, name), {**good(2), "extra": "gone"})]
    first = write_unit(conn, catalog, [job(db, name, rows)])
    assert first[0].failure is not None, "validation passed on a stale catalog: the table must be retried"
    assert (first[0].failure.code, first[0].failure.scope) == (ErrorCode.TIMEOUT, Scope.TABLE)
    assert "table changed while writing" in first[0].failure.message
    retried = write_unit(conn, catalog, [job(db, name, rows, attempts=1)])
    assert results(retried[0]) == [(1, 0, ["unknown_column"])]
    assert retried[0].results is not None and retried[0].results[0].attempts == 2
    assert kit.scalar(db, f"SELECT count(*) FROM {name}") == 2


def test_a_table_wide_refusal_on_a_retry_fails_every_row(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    kit.sql(db, f"CREATE FUNCTION {name}_no() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'gone' USING ERRCODE = '42P01'; END $$; "
                f"CREATE TRIGGER no BEFORE INSERT ON {name} FOR EACH ROW EXECUTE FUNCTION {name}_no()")
    catalog = Catalog()
    rows = [packet_row(dest(db, name), good(1)), packet_row(dest(db, name), good(2))]
    first = write_unit(conn, catalog, [job(db, name, rows)])
    assert first[0].failure is not None and first[0].failure.code is ErrorCode.TIMEOUT
    again = write_unit(conn, catalog, [job(db, name, rows[:1], rows[1:], attempts=1)])
    assert results(again[0]) == [(0, 0, ["unknown_table"]), (0, 0, ["unknown_table"])]
    assert again[0].results is not None and again[0].results[1].failed[0].destination == dest(db, name)


def test_a_table_wide_code_raised_for_some_rows_fails_only_those_rows(db: str, conn: psycopg.Connection[Any]) -> None:
    """A row-level security policy, a trigger or a regclass value may raise a "table-wide" SQLSTATE (42501, 42P01,
    0A000) for one row: on the retry the rows are isolated, and the good rows of the table land (a hostile run: all
    three rows of an RLS table were refused for the one row of another owner)."""
    name = new_table(db)
    kit.sql(db, f"CREATE FUNCTION {name}_no() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.id = 2 THEN "
                "RAISE EXCEPTION 'not yours' USING ERRCODE = '42501'; END IF; RETURN NEW; END $$; "
                f"CREATE TRIGGER no BEFORE INSERT ON {name} FOR EACH ROW EXECUTE FUNCTION {name}_no()")
    catalog = Catalog()
    rows = [packet_row(dest(db, name), good(i)) for i in (1, 2, 3)]
    first = write_unit(conn, catalog, [job(db, name, rows)])
    assert first[0].failure is not None and first[0].failure.code is ErrorCode.TIMEOUT
    again = write_unit(conn, catalog, [job(db, name, rows[:2], rows[2:], attempts=1)])
    assert results(again[0]) == [(1, 0, ["forbidden_destination"]), (1, 0, [])]
    assert again[0].results is not None and "not yours" in again[0].results[0].failed[0].failure.message
    assert kit.scalar(db, f"SELECT array_agg(id ORDER BY id) FROM {name}") == [1, 3]


def test_an_exclusion_conflict_is_refused_not_counted_as_a_duplicate(db: str, conn: psycopg.Connection[Any]) -> None:
    """ON CONFLICT DO NOTHING without a target swallows an exclusion constraint's conflict too: the overlapping row
    was dropped and counted as a duplicate (a hostile run; the audit then reported it missing). The insert names its
    key on such a table, so the row fails alone as constraint_violation, and a replay is still a duplicate."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, during int4range NOT NULL,"
                         " EXCLUDE USING gist (during WITH &&))")
    rows = [packet_row(dest(db, name), {"id": i, "during": r}) for i, r in ((1, "[1,5)"), (2, "[3,8)"), (3, "[10,12)"))]
    catalog = Catalog()
    out = write_unit(conn, catalog, [job(db, name, rows)])
    assert results(out[0]) == [(2, 0, ["constraint_violation"])]
    assert kit.scalar(db, f"SELECT array_agg(id ORDER BY id) FROM {name}") == [1, 3]
    again = write_unit(conn, catalog, [job(db, name, [rows[0], rows[2]])])
    assert results(again[0]) == [(0, 2, [])], "a replay of landed rows is a duplicate, as on any table"


@pytest.mark.parametrize("kind", ["unique-column", "expression-index", "partial-index"])
def test_a_conflict_on_a_second_unique_key_is_refused_not_dropped(db: str, conn: psycopg.Connection[Any],
                                                                  kind: str) -> None:
    """A hostile run: ``{"id": 901, "email": "dup@x"}`` after ``{"id": 900, "email": "dup@x"}`` into a table with
    ``UNIQUE (email)`` (or a unique index on ``lower(email)``) vanished: no row, no error, the offset committed, and
    the audit reported it missing. ON CONFLICT DO NOTHING without a target took the second key's conflict for a
    duplicate. The insert now names its key there: the row fails alone, a replay is still a duplicate."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, email text"
                         + (" UNIQUE)" if kind == "unique-column" else ")"))
    if kind == "expression-index":
        kit.sql(db, f"CREATE UNIQUE INDEX ON {name} (lower(email))")
    elif kind == "partial-index":
        kit.sql(db, f"CREATE UNIQUE INDEX ON {name} (email) WHERE email <> ''")
    spelt = "DUP@x" if kind == "expression-index" else "dup@x"
    rows = [packet_row(dest(db, name), {"id": 900, "email": "dup@x"}),
            packet_row(dest(db, name), {"id": 901, "email": spelt}),
            packet_row(dest(db, name), {"id": 902, "email": "other@x"})]
    catalog = Catalog()
    out = write_unit(conn, catalog, [job(db, name, rows)])
    assert results(out[0]) == [(2, 0, ["constraint_violation"])]
    assert kit.scalar(db, f"SELECT array_agg(id ORDER BY id) FROM {name}") == [900, 902]
    again = write_unit(conn, catalog, [job(db, name, [rows[0], rows[2]])])
    assert results(again[0]) == [(0, 2, [])], "a replay of landed rows is a duplicate, as on any table"
    later = write_unit(conn, catalog, [job(db, name, [rows[1]])])  # alone, in a unit of its own (COPY first)
    assert results(later[0]) == [(0, 0, ["constraint_violation"])]


def test_an_insert_naming_its_key_is_a_duplicate_by_that_key(db: str, conn: psycopg.Connection[Any]) -> None:
    """An insert whose destination names ``"key": ["email"]`` on a table of two keys: a duplicate is one by email
    (the key the audit judges it by). A row of a new email whose ``id`` another row holds was a silent duplicate
    (the audit: missing); it fails alone now, and a row of a known email is a duplicate whatever its ``id``."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, email text NOT NULL UNIQUE)")
    by_email = dest(db, name, key=("email",))
    catalog = Catalog()
    first = [packet_row(by_email, {"id": 1, "email": "a@x"})]
    assert results(write_unit(conn, catalog, [job(db, name, first)])[0]) == [(1, 0, [])]
    rows = [packet_row(by_email, {"id": 1, "email": "b@x"}), packet_row(by_email, {"id": 2, "email": "a@x"}),
            packet_row(by_email, {"id": 3, "email": "c@x"})]
    out = write_unit(conn, catalog, [job(db, name, *([r] for r in rows))])  # a work each: whose is whose
    assert results(out[0]) == [(0, 0, ["constraint_violation"]), (0, 1, []), (1, 0, [])]
    assert kit.scalar(db, f"SELECT array_agg(email ORDER BY id) FROM {name}") == ["a@x", "c@x"]


def test_a_deferrable_unique_key_beside_the_primary_key_takes_inserts(db: str, conn: psycopg.Connection[Any]) -> None:
    """Without a target, ON CONFLICT is refused outright beside a deferrable unique key ("does not support
    deferrable unique constraints"): every packet of the table was parked as a system error, for good."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, code text UNIQUE DEFERRABLE)")
    rows = [packet_row(dest(db, name), {"id": i, "code": f"c{i}"}) for i in (1, 2)]
    catalog = Catalog()
    assert results(write_unit(conn, catalog, [job(db, name, rows)])[0]) == [(2, 0, [])]
    assert results(write_unit(conn, catalog, [job(db, name, rows)])[0]) == [(0, 2, [])]
    assert kit.scalar(db, f"SELECT count(*) FROM {name}") == 2


def test_a_not_null_domain_column_left_out_takes_its_default(db: str, conn: psycopg.Connection[Any]) -> None:
    """json_populate_recordset(NULL::tbl) made whole rows, so a NOT NULL domain column the packet left out was a
    NULL of the domain: every packet was refused as missing_column, though an INSERT takes the default (a hostile
    run). Inserts, upserts and deletes that leave it out now work; a null given for it is still refused."""
    dom = f"{kit.uid('d')}"
    kit.sql(db, f"CREATE DOMAIN {dom} AS int NOT NULL")
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, v text, dn " + dom + " DEFAULT 5)")
    catalog = Catalog()
    rows = [packet_row(dest(db, name), {"id": i, "v": "a"}) for i in (1, 2)]
    assert results(write_unit(conn, catalog, [job(db, name, rows)])[0]) == [(2, 0, [])]
    up = [packet_row(dest(db, name, mode="upsert"), {"id": 1, "v": "b"})]
    assert results(write_unit(conn, catalog, [job(db, name, up)])[0]) == [(1, 0, [])]
    gone = [packet_row(dest(db, name, mode="delete"), {"id": 2})]
    assert results(write_unit(conn, catalog, [job(db, name, gone)])[0]) == [(1, 0, [])]
    assert kit.scalar(db, f"SELECT array_agg(ARRAY[id::text, v, dn::text]) FROM {name}") == [["1", "b", "5"]]
    null = [packet_row(dest(db, name), {"id": 3, "dn": None})]
    assert results(write_unit(conn, catalog, [job(db, name, null)])[0])[0][2] in (["missing_column"], ["bad_value"])


def test_a_null_version_is_refused_and_a_stored_null_version_is_older_than_any(db: str,
                                                                              conn: psycopg.Connection[Any]) -> None:
    """A null compares as nothing: a guarded upsert with "ver": null did nothing to an existing row and inserted a
    new one, silently, and a row stored with a null version could never be upserted or deleted again (a hostile
    run). A null version is refused now (missing_key, as an absent one is); a stored null is older than any."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, v text, ver int)")
    kit.sql(db, f"INSERT INTO {name} VALUES (1, 'old', NULL), (3, 'old', NULL)")
    catalog = Catalog()
    up, gone = dest(db, name, mode="upsert", version="ver"), dest(db, name, mode="delete", version="ver")
    out = write_unit(conn, catalog, [job(db, name, [packet_row(up, {"id": 1, "v": "new", "ver": 1})])])
    assert results(out[0]) == [(1, 0, [])]
    nulls = [packet_row(up, {"id": 2, "v": "x", "ver": None}), packet_row(gone, {"id": 1, "ver": None})]
    out = write_unit(conn, catalog, [job(db, name, nulls)])
    assert results(out[0]) == [(0, 0, ["missing_key", "missing_key"])]
    out = write_unit(conn, catalog, [job(db, name, [packet_row(gone, {"id": 3, "ver": 0})])])
    assert results(out[0]) == [(1, 0, [])]
    assert kit.scalar(db, f"SELECT array_agg(ARRAY[id::text, v, ver::text]) FROM {name}") == [["1", "new", "1"]]


def test_column_grants_count_as_the_privilege_to_insert(db: str, conn: psycopg.Connection[Any]) -> None:
    """A role granted INSERT (id, v) only was refused as forbidden_destination ("may not insert into"), though its
    inserts of those columns work (a hostile run): column grants count now; a column not granted is the server's
    refusal, row by row."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, v text, secret text)")
    role = kit.uid("r")
    kit.sql(db, f"CREATE ROLE {role} NOLOGIN; GRANT USAGE ON SCHEMA public TO {role};"
                f" GRANT INSERT (id, v), SELECT ON {name} TO {role}")
    try:
        conn.execute(f"SET ROLE {role}")
        table = table_of(conn, name)
        assert table.can_insert and not table.can_update
    finally:
        conn.execute("RESET ROLE")
        kit.sql(db, f"REVOKE ALL ON {name} FROM {role}; REVOKE USAGE ON SCHEMA public FROM {role}; DROP ROLE {role}")


def test_a_bad_value_beside_a_not_null_domain_column_is_named_by_its_own_column(
        db: str, conn: psycopg.Connection[Any]) -> None:
    """The probe that names a refused value's column cast a whole row of the table's type: with a NOT NULL domain
    column it failed for every column, and the first one was blamed ("column id (integer): domain … does not allow
    null values", a hostile run). Each value is now cast alone, by its column's type."""
    dom = kit.uid("d")
    kit.sql(db, f"CREATE DOMAIN {dom} AS int NOT NULL")
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, n int, dn " + dom + " DEFAULT 5)")
    rows = [packet_row(dest(db, name), {"id": i, "n": "x" if i == 2 else i}) for i in (1, 2, 3)]
    out = write_unit(conn, Catalog(), [job(db, name, rows)])
    assert results(out[0]) == [(2, 0, ["bad_value"])]
    assert out[0].results is not None
    message = out[0].results[0].failed[0].failure.message
    assert message.startswith("column n (integer): invalid input syntax for type integer"), message


def test_a_failure_while_isolating_holds_the_table_instead_of_failing_rows(db: str,
                                                                         conn: psycopg.Connection[Any]) -> None:
    """The whole statement fails on a row; its first probe then meets a lock timeout: the table waits, no row fails."""
    name = new_table(db)
    kit.sql(db, f"CREATE SEQUENCE {name}_calls; CREATE FUNCTION {name}_f() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN IF nextval('{name}_calls') = 1 THEN RAISE EXCEPTION 'bad row' USING ERRCODE = '23514';"
                f" END IF; RAISE EXCEPTION 'locked' USING ERRCODE = '55P03'; END $$;"
                f"CREATE TRIGGER f BEFORE INSERT ON {name} FOR EACH STATEMENT EXECUTE FUNCTION {name}_f()")
    out = write_unit(conn, Catalog(), [job(db, name, [packet_row(dest(db, name), good(1))])])
    assert out[0].results is None and out[0].failure is not None
    assert (out[0].failure.code, out[0].failure.scope, out[0].failure.message) == (ErrorCode.TIMEOUT, Scope.TABLE,
                                                                                  "locked")


def test_duplicates_are_counted_from_the_first_work_on(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    kit.sql(db, f"INSERT INTO {name} SELECT g, 'x', 1 FROM generate_series(0, 2) g")
    out = write_unit(conn, Catalog(), [job(db, name, [packet_row(dest(db, name), good(i)) for i in (0, 1)],
                                           [packet_row(dest(db, name), good(i)) for i in (2, 3, 4)])])
    assert results(out[0]) == [(0, 2, []), (2, 1, [])]


def test_metadata_columns_are_filled_from_the_record(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, src_offset bigint, src_partition int,"
                         " src_topic text, src_ts timestamptz, src_key text)")
    meta = Metadata(offset="src_offset", partition="src_partition", topic="src_topic", timestamp="src_ts",
                    key="src_key")
    d = dest(db, name, metadata=meta)
    m = Message(topic="in", partition=4, offset=77, key="k-é".encode(), value=b"{}", timestamp=(1, 1_700_000_000_045))
    row = Row(m, msgspec.Raw(b'{"id": 1 }'), ("id",), d)  # a view, as sort files a packet's data
    tight = Row(Message(topic="in", partition=4, offset=78, key=None, value=b"{}", timestamp=(1, 1)), b'{"id":2}',
                ("id",), d)
    binary = Row(Message(topic="in", partition=4, offset=79, key=b"k-\xff", value=b"{}", timestamp=(1, 1)),
                 b'{"id":3}', ("id",), d)  # a key that is not text: refused, not changed to U+FFFD
    out = write_unit(conn, Catalog(), [job(db, name, [row, tight, binary])])
    assert results(out[0]) == [(2, 0, ["bad_value"])]
    got = kit.sql(db, f"SELECT src_offset, src_partition, src_topic, src_ts = '2023-11-14T22:13:20.045Z', src_key"
                      f" FROM {name} WHERE id = 1")
    assert got == [(77, 4, "in", True, "k-é")]


def test_a_column_both_data_and_metadata_give_is_refused_not_overwritten(db: str,
                                                                        conn: psycopg.Connection[Any]) -> None:
    """The JSON's last key won, silently: ``{"id": 500}`` with the offset into ``id`` landed as id 0, and the
    audit then missed the record (a hostile run)."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, v text)")
    m = Message(topic="in", partition=0, offset=0, key=None, value=b"{}", timestamp=(1, 1))
    clash = Row(m, b'{"id":500,"v":"data"}', ("id", "v"), dest(db, name, metadata=Metadata(offset="id")))
    fine = Row(m, b'{"id":7}', ("id",), dest(db, name, metadata=Metadata(topic="v")))
    out = write_unit(conn, Catalog(), [job(db, name, [clash, fine])])
    assert results(out[0]) == [(1, 0, ["bad_packet"])]
    assert out[0].results is not None and "data gives column 'id', which metadata fills from the record's offset" \
        in out[0].results[0].failed[0].failure.message
    assert kit.sql(db, f"SELECT id, v FROM {name}") == [(7, "in")]


def test_upserts_of_one_shape_are_folded_by_postgresql_in_one_statement_and_the_last_wins(
        db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    kit.sql(db, f"INSERT INTO {name} VALUES (3, 'there', 1); CREATE TABLE {name}_stmts (n int);"
                f"CREATE FUNCTION {name}_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                f" INSERT INTO {name}_stmts VALUES (1); RETURN NULL; END $$;"
                f"CREATE TRIGGER counted AFTER INSERT ON {name} FOR EACH STATEMENT EXECUTE FUNCTION {name}_count()")
    up = dest(db, name, "upsert")
    rng = random.Random(7)
    sent = [{"id": rng.randrange(20), "name": f"v{i}", "qty": rng.randrange(5)} for i in range(200)]
    sent[150] = {"id": 5, "name": "bad", "qty": "x"}  # a bad packet whose key comes again later: it fails alone
    sent.append({"id": 5, "name": "after the bad one", "qty": 4})
    out = write_unit(conn, Catalog(), [job(db, name, [packet_row(up, d) for d in sent[:100]],
                                           [packet_row(up, d) for d in sent[100:]])])
    assert results(out[0]) == [(100, 0, []), (100, 0, ["bad_value"])], "every other packet lands, none a duplicate"
    last = {3: ("there", 1)}
    for d in sent[:150] + sent[151:]:
        last[d["id"]] = (d["name"], d["qty"])
    assert kit.sql(db, f"SELECT id, name, qty FROM {name} ORDER BY id") == [(k, *v) for k, v in sorted(last.items())]
    assert kit.scalar(db, f"SELECT count(*) FROM {name}_stmts") > 1, "the bad row was isolated statement by statement"
    kit.sql(db, f"TRUNCATE {name}_stmts")
    again = [{"id": i % 7, "name": f"w{i}", "qty": i % 5} for i in range(50)]
    out = write_unit(conn, Catalog(), [job(db, name, [packet_row(up, d) for d in again])])
    assert results(out[0]) == [(50, 0, [])]
    assert kit.scalar(db, f"SELECT count(*) FROM {name}_stmts") == 1, "one statement for every upsert of the unit"
    assert kit.sql(db, f"SELECT id, name FROM {name} WHERE id < 7 ORDER BY id") == sorted({d["id"]: d["name"]
                                                                                         for d in again}.items())


def test_keys_whose_index_compares_otherwise_than_the_column_are_folded_in_python_not_by_postgresql(
        db: str, conn: psycopg.Connection[Any]) -> None:
    """DISTINCT ON compares as the column's type and collation do; an index with its own collation or operator
    class may keep apart what they call equal: such a key is never folded by PostgreSQL (a review found the
    upsert of 'a' silently dropping 'A')."""
    kit.sql(db, "DO $$ BEGIN CREATE COLLATION IF NOT EXISTS kapow_ci (provider = icu, locale = 'und-u-ks-level2',"
                " deterministic = false); END $$")
    name = new_table(db, "CREATE TABLE {name} (name text COLLATE kapow_ci NOT NULL, v int)")
    kit.sql(db, f'CREATE UNIQUE INDEX ON {name} (name COLLATE "C")')
    assert table_of(conn, name).folding_keys == frozenset()
    assert table_of(conn, new_table(db)).folding_keys == frozenset({("id",)})
    up = dest(db, name, "upsert")
    out = write_unit(conn, Catalog(), [job(db, name, [packet_row(up, {"name": "A", "v": 1}),
                                                      packet_row(up, {"name": "a", "v": 2})])])
    assert results(out[0]) == [(2, 0, [])]
    assert kit.sql(db, f'SELECT name, v FROM {name} ORDER BY name COLLATE "C"') == [("A", 1), ("a", 2)]


def test_a_table_on_conflict_refuses_never_takes_plain_inserts(db: str, conn: psycopg.Connection[Any]) -> None:
    """A deferrable unique constraint makes ON CONFLICT without a target fail: plain inserts would land until the
    first duplicate and then fail every replay. Such a table takes no plain inserts; its inserts name the primary key
    (test_a_deferrable_unique_key_beside_the_primary_key_takes_inserts), so a replay is a duplicate."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, name text, qty int, e int UNIQUE DEFERRABLE)")
    assert not table_of(conn, name).plain_inserts
    assert table_of(conn, new_table(db)).plain_inserts
    catalog = Catalog()
    for landed, duplicates in ((1, 0), (0, 1)):
        out = write_unit(conn, catalog, [job(db, name, [packet_row(dest(db, name), good(1))])])
        assert results(out[0]) == [(landed, duplicates, [])]
    assert kit.scalar(db, f"SELECT count(*) FROM {name}") == 1


def test_upserts_and_deletes_of_one_key_in_one_unit_end_in_offset_order(db: str,
                                                                         conn: psycopg.Connection[Any]) -> None:
    name = new_table(db)
    up, down = dest(db, name, "upsert"), dest(db, name, "delete")
    rows = [packet_row(up, {"id": 1, "name": "a", "qty": 1}), packet_row(down, {"id": 1}),
            packet_row(up, {"id": 1, "name": "b", "qty": 2}), packet_row(up, {"id": 2, "name": "c", "qty": 3}),
            packet_row(dest(db, name), {"id": 2, "name": "ignored", "qty": 9})]
    out = write_unit(conn, Catalog(), [job(db, name, rows)])
    assert out[0].failure is None
    assert kit.sql(db, f"SELECT id, name, qty FROM {name} ORDER BY id") == [(1, "b", 2), (2, "c", 3)]


def route_config(db: str, table: str) -> Any:
    return parse_config(f'[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                        f'[[destinations]]\nvanity = "wh"\ndatabases = ["{db}"]\n'
                        f'modes = ["insert", "upsert", "delete"]\n'
                        f'[[routes]]\ntopic = "cdc"\nvanity = "wh"\ndatabase = "{db}"\ntable = "{table}"\n'
                        f'format = "debezium"\nmetadata = {{ lsn = "lsn", ts_ms = "ts" }}\n')


def test_change_events_are_decoded_with_the_table_types_and_applied(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, v text, lsn bigint, ts bigint)")
    kit.sql(db, f"INSERT INTO {name} VALUES (3, 'doomed', 0, 0)")
    spec = route_specs(route_config(db, name))["cdc"]

    def event(op: str, before: Any, after: Any) -> Row:
        value = msgspec.json.encode({"before": before, "after": after, "op": op,
                                     "source": {"lsn": 900 + len(op), "ts_ms": 5}})
        return Row(msg(value, b'{"id": 3}'), b"", (), spec.dests["upsert"], spec)

    rows = [Row(msg(b'{"op": 5}'), b"", (), spec.dests["upsert"], spec),
            event("c", None, {"id": 1, "v": "one"}), event("u", {"id": 1}, {"id": 1, "v": "uno"}),
            event("d", {"id": 3}, None), event("t", None, None), event("c", None, {"id": 9, "nope": 1})]
    key = TableKey("wh", db, "public", name)
    out = write_unit(conn, Catalog(), [TableJob(key, spec.destination, [TableWork(key, spec.destination, rows, 1, 1)])])
    assert results(out[0]) == [(3, 1, ["bad_change_event", "unknown_column"])]
    assert out[0].results is not None and {r.destination for r in out[0].results[0].failed} == {spec.dests["upsert"]}
    assert kit.sql(db, f"SELECT id, v, lsn, ts FROM {name} ORDER BY id") == [(1, "uno", 901, 5)]


# ---------------------------------------------------------------------------------------------------- lanes

PIPELINE = CONFIG.pipeline


def lane(db: str, deliver: Callable[[WorkResult], None], *, max_connections: int = 2, lock_ms: int = 200,
         hold_s: float = 60.0) -> DatabaseLane:
    cfg = parse_config(f'[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                       f'[[destinations]]\nvanity = "wh"\nhost = "{kit.PG_HOST}"\nport = {kit.PG_PORT}\n'
                       f'databases = ["{db}"]\nmax_connections = {max_connections}\nlock_timeout_ms = {lock_ms}\n'
                       f'[pipeline]\nhold_s = {hold_s}\nretry_initial_backoff_s = 0.02\nretry_max_backoff_s = 0.1\n'
                       'circuit_failures_to_open = 2\ncircuit_open_s = 0.2\n')
    return DatabaseLane(vanity="wh", database=db, config=cfg.destinations[0], pipeline=cfg.pipeline,
                        catalog=Catalog(), deliver=deliver)


class Answers:
    def __init__(self) -> None:
        self.got: list[WorkResult] = []
        self.cond = threading.Condition()

    def __call__(self, result: WorkResult) -> None:
        with self.cond:
            self.got.append(result)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 30.0) -> list[WorkResult]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.got) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.got)} of {n} answers"
                self.cond.wait(left)
            return list(self.got)


def sessions(db: str) -> int:
    """The lane's sessions on ``db`` as the server counts them (its pool connects as application 'kapow')."""
    return int(kit.scalar("postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                                      " AND application_name = 'kapow'", (db,)))


def test_a_lane_opens_at_most_max_connections_under_a_burst(db: str) -> None:
    """Slow tables arriving faster than they are written: two connections, never more, and both used.

    Each table's statement takes 0.3 s and a new table arrives every 0.03 s, so a third connection, if the lane
    allowed one, would always find work waiting.
    """
    kit.sql(db, "CREATE OR REPLACE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "PERFORM pg_sleep(0.3); RETURN NULL; END $$")
    tables = [new_table(db) for _ in range(12)]
    for name in tables:
        kit.sql(db, f"CREATE TRIGGER slow BEFORE INSERT ON {name} FOR EACH STATEMENT EXECUTE FUNCTION slow_down()")
    answers = Answers()
    la = lane(db, answers, max_connections=2)
    peak = 0
    try:
        for n, name in enumerate(tables):
            key = TableKey("wh", db, "public", name)
            la.submit(TableWork(key, la.config, [packet_row(dest(db, name), good(n))], n, 10))
            pause = time.monotonic() + 0.03
            while time.monotonic() < pause:
                peak = max(peak, sessions(db))
        while len(answers.got) < len(tables):
            peak = max(peak, sessions(db))
            answers.wait(min(len(answers.got) + 1, len(tables)))
    finally:
        la.close(5)
    assert all(r.landed == 1 for r in answers.got)
    assert peak == 2, f"{peak} sessions for max_connections = 2"


def test_a_connection_that_sent_a_statement_of_many_mb_is_closed_when_given_back(db: str) -> None:
    """libpq keeps its buffers at the largest message a connection sent: a lane's connection that carried 0.9 MB
    rows held ~31 MB for good. After a unit over RETIRE_AFTER_BYTES the connection is closed, not kept idle."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, name text, qty int)")
    answers = Answers()
    la = lane(db, answers, max_connections=1)
    key = TableKey("wh", db, "public", name)
    try:
        la.submit(TableWork(key, la.config, [packet_row(dest(db, name), good(1))], 1, 10))
        answers.wait(1)
        kit.wait_for(lambda: sessions(db) == 1, 5, "the small unit's connection kept idle")
        big = [packet_row(dest(db, name), {**good(i), "name": "n" * 1_000_000}) for i in range(2, 12)]  # 10 MB
        la.submit(TableWork(key, la.config, big, 2, 10 * 1_000_000))
        assert [r.landed for r in answers.wait(2)] == [1, 10]
        kit.wait_for(lambda: sessions(db) == 0, 5, "the connection that sent 10 MB closed")
        la.submit(TableWork(key, la.config, [packet_row(dest(db, name), good(20))], 3, 10))
        assert [r.landed for r in answers.wait(3)] == [1, 10, 1], "a new connection is opened for the next unit"
    finally:
        la.close(5)


def test_a_locked_table_is_held_alone_then_probed_free_without_a_write(db: str) -> None:
    locked, free = new_table(db), new_table(db)
    answers = Answers()
    la = lane(db, answers, hold_s=0.5)
    kl, kf = TableKey("wh", db, "public", locked), TableKey("wh", db, "public", free)
    try:
        with psycopg.connect(kit.dsn(db)) as locker:
            locker.execute(f"LOCK TABLE {locked} IN ACCESS EXCLUSIVE MODE".encode())
            la.submit(TableWork(kl, la.config, [packet_row(dest(db, locked), good(1))], 1, 10))
            la.submit(TableWork(kf, la.config, [packet_row(dest(db, free), good(1))], 1, 10))
            got = answers.wait(2)
            parked = [r for r in got if r.failed]
            assert [r.work.key for r in parked] == [kl] and parked[0].failed[0].failure.code is ErrorCode.TIMEOUT
            assert [r.landed for r in got if r.work.key == kf] == [1]
            assert la.circuit.closed and not la.healthy(kl) and la.healthy(kf)
            kit.wait_for(lambda: not la.busy(), 10, "the lane to settle")
            time.sleep(0.15)  # past the table's back-off (at most 0.1 s): the probe may run now
            assert la.probe_table(kl) is False, "a table still locked was reported writable"
            locker.rollback()
        kit.wait_for(lambda: la.probe_table(kl), 10, "the probe to see the lock gone")
        assert la.healthy(kl)
        assert kit.scalar(db, f"SELECT count(*) FROM {locked}") == 0, "the probe wrote to the table"
    finally:
        la.close(5)


def test_a_database_that_is_gone_opens_the_circuit_and_parks_after_hold(db: str) -> None:
    answers = Answers()
    gone = kit.uid("kgone")  # never created: every connection is refused by the server (3D000)
    la = lane(gone, answers, hold_s=0.5)
    key = TableKey("wh", gone, "public", "t")
    try:
        la.submit(TableWork(key, la.config, [packet_row(dest(gone, "t"), good(1))], 1, 10))
        (result,) = answers.wait(1)
        assert not la.circuit.closed
        assert [r.failure.code for r in result.failed] == [ErrorCode.DATABASE_UNAVAILABLE]
        assert "held" in result.failed[0].failure.message
        assert la.probe() is False
        assert not la.healthy()
    finally:
        la.close(2)


# ------------------------------------------------------------------- two unique keys: a batch is the sequence

TWO_KEYS = "CREATE TABLE {name} (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, v text)"


def _two_key_op(db: str, name: str, op: tuple[str, int, str, str]) -> Row:
    kind, i, email, v = op
    by_email = {"key": ("email",)}
    if kind == "insert":
        return packet_row(dest(db, name), {"id": i, "email": email, "v": v})
    if kind == "insert without v":  # another shape: a statement of its own
        return packet_row(dest(db, name), {"id": i, "email": email})
    if kind == "upsert":
        return packet_row(dest(db, name, "upsert"), {"id": i, "email": email, "v": v})
    if kind == "upsert by email":
        return packet_row(dest(db, name, "upsert", **by_email), {"email": email, "id": i, "v": v})
    if kind == "delete":
        return packet_row(dest(db, name, "delete"), {"id": i})
    return packet_row(dest(db, name, "delete", **by_email), {"email": email})


def _failed_offsets(outcomes: list[JobOutcome]) -> list[tuple[int, str]]:
    out = []
    for outcome in outcomes:
        assert outcome.failure is None and outcome.results is not None, outcome.failure
        out += [(rec.msg.offset(), rec.failure.code.value) for r in outcome.results for rec in r.failed]
    return sorted(out)


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_to_a_table_of_two_unique_keys_lands_what_the_packets_one_by_one_do(
        db: str, conn: psycopg.Connection[Any], seed: int) -> None:
    # a hostile run: rows of different ids interact through the email key (an insert takes an email a delete
    # frees, an upsert clashes with one), and rounds planned per id reordered them: 2,000 of 4,000 rows lost, with
    # no error. Each random sequence is applied one packet a unit, then as one batch; tables and errors must agree.
    rnd = random.Random(seed)
    kinds = ["insert", "insert", "insert without v", "upsert", "upsert by email", "delete", "delete by email"]
    for _ in range(25):
        one, batch = new_table(db, TWO_KEYS), new_table(db, TWO_KEYS)
        ops = [(rnd.choice(kinds), rnd.randint(1, 4), rnd.choice("abc"), rnd.choice("xyz"))
               for _ in range(rnd.randint(2, 14))]
        rows_one = [_two_key_op(db, one, op) for op in ops]
        rows_batch = [_two_key_op(db, batch, op) for op in ops]
        catalog = Catalog()
        failed_one = [(n, code) for n, row in enumerate(rows_one)
                      for _o, code in _failed_offsets(write_unit(conn, catalog, [job(db, one, [row])]))]
        outcomes = write_unit(conn, catalog, [job(db, batch, rows_batch)])
        first = rows_batch[0].msg.offset()
        failed_batch = [(o - first, code) for o, code in _failed_offsets(outcomes)]
        state_one = kit.sql(db, f"SELECT id, email, v FROM {one} ORDER BY id")
        state_batch = kit.sql(db, f"SELECT id, email, v FROM {batch} ORDER BY id")
        assert (state_batch, failed_batch) == (state_one, failed_one), ops


def test_a_timestamp_key_spelt_two_ways_keeps_its_order_in_a_batch(db: str, conn: psycopg.Connection[Any]) -> None:
    # the rounds class keys by what their column types make of them, and a timestamp was compared as text: three
    # spellings of one instant were three keys, and the delete could undo the upsert after it
    ddl = "CREATE TABLE {name} (at timestamptz PRIMARY KEY, v text)"
    one, batch = new_table(db, ddl), new_table(db, ddl)
    ops = [("upsert", {"at": "2026-01-01T00:00:00Z", "v": "1"}), ("delete", {"at": "2026-01-01 00:00:00+00"}),
           ("upsert", {"at": "2026-01-01T01:00:00+01:00", "v": "2"}), ("upsert", {"at": "2026-01-02", "v": "3"}),
           ("delete", {"at": "2026-01-02T00:00:00.000+00:00"})]
    catalog = Catalog()
    for mode, data in ops:
        write_unit(conn, catalog, [job(db, one, [packet_row(dest(db, one, mode), data)])])
    outcomes = write_unit(conn, catalog, [job(db, batch, [packet_row(dest(db, batch, mode), d) for mode, d in ops])])
    assert _failed_offsets(outcomes) == []
    expected = kit.sql(db, f"SELECT at, v FROM {one} ORDER BY at")
    assert len(expected) == 1 and expected[0][1] == "2"  # the premise: one row, the last upsert's
    assert kit.sql(db, f"SELECT at, v FROM {batch} ORDER BY at") == expected


ONE_KEY = "CREATE TABLE {name} (id bigint PRIMARY KEY, v int CHECK (v >= 0), note text)"


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_with_refused_values_lands_and_refuses_what_the_packets_one_by_one_do(
        db: str, conn: psycopg.Connection[Any], seed: int) -> None:
    # a hostile run: folding an upsert into a later one (or a delete) never checked its values, and merging two
    # upserts of different columns landed a refused packet's other columns ({v: "bad", note: "BAD"}, {v: 5})
    rnd = random.Random(seed)
    for _ in range(25):
        one, batch = new_table(db, ONE_KEY), new_table(db, ONE_KEY)
        ops: list[tuple[str, dict[str, Any]]] = []
        for _ in range(rnd.randint(2, 12)):
            mode = rnd.choice(["insert", "upsert", "upsert", "delete"])
            data: dict[str, Any] = {"id": rnd.randint(1, 3)}
            if mode != "delete":
                data["v"] = rnd.choice([1, 5, -1, "bad"])
                if rnd.random() < 0.5:
                    data["note"] = rnd.choice(["n1", "n2", "BAD"])
            ops.append((mode, data))
        catalog = Catalog()
        failed_one = []
        for n, (mode, data) in enumerate(ops):
            alone = write_unit(conn, catalog, [job(db, one, [packet_row(dest(db, one, mode), data)])])
            failed_one += [(n, code) for _o, code in _failed_offsets(alone)]
        rows = [packet_row(dest(db, batch, mode), data) for mode, data in ops]
        outcomes = write_unit(conn, catalog, [job(db, batch, rows)])
        failed_batch = [(o - rows[0].msg.offset(), code) for o, code in _failed_offsets(outcomes)]
        state_one = kit.sql(db, f"SELECT id, v, note FROM {one} ORDER BY id")
        state_batch = kit.sql(db, f"SELECT id, v, note FROM {batch} ORDER BY id")
        assert (state_batch, failed_batch) == (state_one, failed_one), ops


def test_inserts_of_two_shapes_to_a_table_of_two_keys_keep_their_order(db: str, conn: psycopg.Connection[Any]) -> None:
    # a hostile run: inserts giving only the second key were grouped by shape, and the second of each token won
    name = new_table(db, "CREATE TABLE {name} (sid bigserial PRIMARY KEY, token text UNIQUE, v int, note text)")
    rows = [packet_row(dest(db, name), {"token": "z", "v": 1})]  # the shorter shape comes first in the batch
    for i in range(5):
        rows += [packet_row(dest(db, name), {"token": f"t{i}", "v": 1, "note": "first"}),
                 packet_row(dest(db, name), {"token": f"t{i}", "v": 2})]
    _failed_offsets(write_unit(conn, Catalog(), [job(db, name, rows)]))
    assert kit.sql(db, f"SELECT DISTINCT v, note FROM {name} WHERE token <> 'z'") == [(1, "first")]
    assert kit.scalar(db, f"SELECT count(*) FROM {name}") == 6


def test_isolating_a_bad_row_among_many_statements_costs_a_few_calls_not_one_each(
        db: str, conn: psycopg.Connection[Any]) -> None:
    # a hostile run: a table written in offset order has a statement per switch of operation, and isolation tried
    # each one alone: a bad row in 2,000 alternating inserts and deletes brought the table to ~1,000 rows/s
    name = new_table(db, TWO_KEYS)
    table = table_of(conn, name)
    rows = []
    for i in range(100):
        rows.append(row_in(dest(db, name), {"id": i, "email": f"e{i}", "v": "x"}))
        rows.append(row_in(dest(db, name, "delete"), {"id": i - 1}))
    rows[100] = row_in(dest(db, name), {"id": "bad", "email": "e50", "v": "x"})  # (was insert 50)
    statements = plan(table, rows, dict.fromkeys(range(len(rows)), ("id",)))
    assert len(statements) == 200  # the premise: one statement per row
    result = isolate(conn, table, statements, rows)
    assert [(i, f.code) for i, f in result.failures] == [(100, ErrorCode.BAD_VALUE)]
    assert result.probes <= 6, result.probes  # the rest in one call, the statements before it in one, itself
    assert kit.sql(db, f"SELECT id FROM {name}") == [(99,)]


def test_a_trigger_raising_a_connection_state_is_its_table_s_failure_not_the_database_s(
        db: str, conn: psycopg.Connection[Any]) -> None:
    """A trigger that raises 08006 (itself, or from a dead server through dblink) inside the fence: the server
    answered, so the table is held; its neighbour in the unit lands, and no failure opens the database's circuit."""
    bad, ok = new_table(db), new_table(db)
    kit.sql(db, f"CREATE FUNCTION {bad}_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'remote server gone' USING ERRCODE = '08006'; END $$; "
                f"CREATE TRIGGER f BEFORE INSERT ON {bad} FOR EACH ROW EXECUTE FUNCTION {bad}_f()")
    out = write_unit(conn, Catalog(), [job(db, bad, [packet_row(dest(db, bad), good(1))]),
                                       job(db, ok, [packet_row(dest(db, ok), good(i)) for i in range(3)])])
    assert out[0].failure is not None
    assert (out[0].failure.code, out[0].failure.scope) == (ErrorCode.DATABASE_UNAVAILABLE, Scope.TABLE)
    assert results(out[1]) == [(3, 0, [])]
    assert kit.scalar(db, f"SELECT count(*) FROM {ok}") == 3


def test_a_trigger_s_assert_is_one_row_s_refusal_not_the_whole_unit_s(db: str, conn: psycopg.Connection[Any]) -> None:
    """PL/pgSQL's OTHERS leaves out ASSERT (P0004): the fence names it, so the row is isolated and refused and
    the other rows and tables land."""
    strict, ok = new_table(db), new_table(db)
    kit.sql(db, f"CREATE FUNCTION {strict}_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "ASSERT NEW.qty <> 3, 'qty 3 is refused'; RETURN NEW; END $$; "
                f"CREATE TRIGGER f BEFORE INSERT ON {strict} FOR EACH ROW EXECUTE FUNCTION {strict}_f()")
    rows = [packet_row(dest(db, strict), good(i)) for i in range(5)]
    out = write_unit(conn, Catalog(), [job(db, strict, rows), job(db, ok, [packet_row(dest(db, ok), good(i))
                                                                            for i in range(2)])])
    assert out[0].alone and out[0].failure is not None and out[0].failure.scope is Scope.ROW  # bisected alone
    assert results(out[1]) == [(2, 0, [])]
    again = write_unit(conn, Catalog(), [job(db, strict, rows)])
    assert results(again[0]) == [(4, 0, ["row_rejected"])]
    assert again[0].results is not None and "qty 3 is refused" in again[0].results[0].failed[0].failure.message
    assert kit.scalar(db, f"SELECT count(*) FROM {strict}") == 4


def test_a_metadata_column_the_table_lacks_fails_its_packet_not_the_table_s_batch(
        db: str, conn: psycopg.Connection[Any]) -> None:
    """A hostile run: metadata naming ctid (or no column at all) failed the whole statement, and every good row
    of the table's batch was refused with its error. Metadata columns are validated as the row's own; one may
    also give the key."""
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, name text, qty int, src_offset bigint)")
    plain = dest(db, name)
    rows = [packet_row(plain, good(i)) for i in range(3)]
    rows.insert(1, packet_row(dest(db, name, metadata=Metadata(offset="ctid")), good(10)))
    rows.insert(3, packet_row(dest(db, name, metadata=Metadata(partition="nosuchcol")), good(11)))
    rows.append(packet_row(dest(db, name, metadata=Metadata(offset="src_offset")), good(12)))
    out = write_unit(conn, Catalog(), [job(db, name, rows)])
    assert results(out[0]) == [(4, 0, ["unknown_column", "unknown_column"])]
    assert kit.sql(db, f"SELECT id FROM {name} ORDER BY id") == [(0,), (1,), (2,), (12,)]
    keyed = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, name text)")
    by_offset = packet_row(dest(db, keyed, metadata=Metadata(offset="id")), {"name": "keyed by its offset"})
    out = write_unit(conn, Catalog(), [job(db, keyed, [by_offset])])
    assert results(out[0]) == [(1, 0, [])]
    assert kit.sql(db, f"SELECT id, name FROM {keyed}") == [(by_offset.msg.offset(), "keyed by its offset")]


def test_a_delete_reads_only_its_key_and_version_whatever_else_data_holds(db: str,
                                                                           conn: psycopg.Connection[Any]) -> None:
    """CONTRACT: a delete ignores every column but its key (and version). A hostile run: a value the ignored column
    would refuse (a \\u0000 in text, a string in an int column) refused the delete, and the row stayed."""
    name = new_table(db)
    kit.sql(db, f"INSERT INTO {name} SELECT g, 'x', 1 FROM generate_series(1, 4) g")
    gone = dest(db, name, "delete")
    rows = [packet_row(gone, {"id": 1, "name": "\u0000"}), packet_row(gone, {"id": 2, "qty": "notint"}),
            packet_row(gone, {"id": 3, "nope": [1, 2]}), packet_row(gone, {"id": 9})]
    out = write_unit(conn, Catalog(), [job(db, name, rows)])
    assert results(out[0]) == [(3, 1, [])]
    assert kit.sql(db, f"SELECT id FROM {name}") == [(4,)]


def test_a_view_is_refused_as_what_it_is_not_as_missing(db: str, conn: psycopg.Connection[Any]) -> None:
    """errors.md: a view is unsupported_table. A hostile run: it was unknown_table, "does not exist"."""
    base = new_table(db)
    view = f"{base}_v"
    kit.sql(db, f"CREATE VIEW {view} AS SELECT * FROM {base}")
    out = write_unit(conn, Catalog(), [job(db, view, [packet_row(dest(db, view), good(i)) for i in range(2)])])
    assert results(out[0]) == [(0, 0, ["unsupported_table", "unsupported_table"])]
    assert out[0].results is not None
    message = out[0].results[0].failed[0].failure.message
    assert message == f"public.{view} is a view, not a table: write to a plain table"
