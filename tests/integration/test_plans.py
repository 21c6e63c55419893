"""Statement shapes planned once per connection (kapow.postgres.plans): a shape run often becomes a function of its
own, and every outcome (rows landed, conflicts retried, a bad row's error and column, a null key refused, schema
changes) is what the same statements give as text; the functions are bounded and never made inside a
transaction."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
import pytest

from kapow.contract import Destination, PacketDecoder
from kapow.postgres import plans
from kapow.postgres.catalog import Table, load_tables
from kapow.postgres.statements import UPSERT, RowIn, plan
from kapow.postgres.writer import TableOutcome, apply_unit, call, configure_connection
from tests.integration import kit

pytestmark = pytest.mark.integration

DDL = """CREATE TABLE {name} (id bigint PRIMARY KEY, email text UNIQUE, n integer, kapow_n text,
                               at timestamptz DEFAULT now())"""


@pytest.fixture(autouse=True)
def _plan_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plans, "PLAN_AFTER", 3)  # (16 in use: these tests would run every shape 16 times)


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with kit.scratch_database("kplan") as name:
        yield name


def connect(db: str, *, planned: bool) -> psycopg.Connection[Any]:
    conn = psycopg.connect(kit.dsn(db))
    configure_connection(conn, statement_timeout_ms=10_000, lock_timeout_ms=400)
    if not planned:
        conn.kapow_plans = None  # type: ignore[attr-defined]  # (as a connection that was never given its Plans)
    return conn


def functions(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()"
                            " AND proname LIKE 'kapow\\_p%'").fetchone()[0])  # type: ignore[index]


def table_of(conn: psycopg.Connection[Any], name: str) -> Table:
    table = load_tables(conn, [("public", name)])[("public", name)]
    assert table is not None
    return table


def rows_of(db: str, name: str, docs: list[dict[str, Any]], mode: str = "insert") -> list[RowIn]:
    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=16, max_destinations=4)
    dest = Destination("wh", db, name, mode=mode)
    out = []
    for doc in map(msgspec.json.encode, docs):
        out.append(RowIn(doc, decoder.keys(doc), dest, decoder.values))
    return out


def unit(conn: psycopg.Connection[Any], db: str, name: str, docs: list[dict[str, Any]],
         mode: str = "insert") -> TableOutcome:
    table = table_of(conn, name)
    rows = rows_of(db, name, docs, mode)
    keys_of = {i: ("id",) for i in range(len(rows))} if mode != "insert" else {}
    return apply_unit(conn, [plan(table, rows, keys_of)], [mode == "insert"])[0]


def said(outcome: TableOutcome) -> tuple[Any, ...]:
    failure = outcome.failure
    return (tuple(outcome.affected), outcome.conflicted, failure and (failure.code, failure.message, failure.scope),
            outcome.column)


def test_a_shape_run_often_gives_what_its_text_gives(db: str) -> None:
    """The same sequence of units, on a planned and an unplanned connection, into two tables: the same outcome at
    every step (new rows, a replayed key, a bad value, an upsert, a null key refused) and the same rows."""
    rng = random.Random(7)
    names = [kit.new_table(db, DDL, "p"), kit.new_table(db, DDL, "p")]
    conns = [connect(db, planned=True), connect(db, planned=False)]
    try:
        for step in range(40):
            base = step * 10
            docs: list[dict[str, Any]] = [{"id": base + i, "email": f"e{base + i}", "n": i, "kapow_n": "x"}
                                          for i in range(rng.randrange(1, 6))]
            mode = "insert"
            if step % 7 == 3:
                docs.append({"id": base - 10, "email": f"e{base - 10}", "n": 0, "kapow_n": "again"})  # a replay
            if step % 9 == 4:
                docs[0]["n"] = "not a number"  # a bad value: the table is refused at its row
            if step % 5 == 2:
                mode = UPSERT
                docs = [{"id": d["id"] - 10, "n": 100 + step, "kapow_n": "up"} for d in docs]
            outcomes = [unit(conn, db, name, docs, mode) for conn, name in zip(conns, names, strict=True)]
            assert said(outcomes[0]) == said(outcomes[1]), (step, outcomes)
        planned = plans.of(conns[0])
        assert planned is not None and planned.made >= 2 and functions(conns[0]) == len(planned) >= 2
        assert functions(conns[1]) == 0
        want = kit.sql(db, f"SELECT id, email, n, kapow_n FROM {names[1]} ORDER BY id")
        assert kit.sql(db, f"SELECT id, email, n, kapow_n FROM {names[0]} ORDER BY id") == want and want
    finally:
        for conn in conns:
            conn.close()


def test_a_null_key_is_refused_by_a_planned_statement_too(db: str) -> None:
    name = kit.new_table(db, "CREATE TABLE {name} (id bigint UNIQUE, n integer)", "p")
    with connect(db, planned=True) as conn:
        for i in range(plans.PLAN_AFTER + 1):
            assert unit(conn, db, name, [{"id": i, "n": i}]).failure is None
        assert functions(conn) == 1  # the plain insert tried first (its fallback ON CONFLICT ran never)
        outcome = unit(conn, db, name, [{"id": None, "n": 1}])
        assert outcome.failure is not None and outcome.failure.code.value == "missing_key", outcome
        assert outcome.column == "id"


def test_planned_statements_follow_the_table_when_it_changes(db: str) -> None:
    name = kit.new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, n integer, s text)", "p")
    with connect(db, planned=True) as conn:
        table = table_of(conn, name)  # the statement's text is kept from before every change below
        rows = rows_of(db, name, [{"id": 0, "n": 1, "s": "a"}])
        statement = plan(table, rows, {})[0]

        def land(i: int, n: Any) -> list[Any]:
            payload = msgspec.json.encode([{"id": i, "n": n, "s": f"s{i}"}]).decode()
            return call(conn, [statement.text], [payload], [1, 2])

        for i in range(plans.PLAN_AFTER + 1):
            assert land(i, i)[0][2] == 1
        assert functions(conn) == 1
        kit.sql(db, f"ALTER TABLE {name} ADD COLUMN extra text DEFAULT 'd'")
        assert land(10, 10)[0][2] == 1
        kit.sql(db, f"ALTER TABLE {name} ALTER COLUMN n TYPE numeric(20,2)")
        assert land(11, "12.345")[0][2] == 1
        kit.sql(db, f"DROP TABLE {name}")
        gone = land(12, 1)[0]
        assert gone[3] == "42P01"  # undefined_table, as the text gives it
        kit.sql(db, f"CREATE TABLE {name} (s text, n bigint NOT NULL, id bigint PRIMARY KEY)")
        assert land(13, 2**40)[0][2] == 1
        assert functions(conn) == 1  # the same function all along
    assert kit.sql(db, f"SELECT id, n, s FROM {name}") == [(13, 2**40, "s13")]
    assert kit.sql(db, f"SELECT count(*) FROM {name}") == [(1,)]


def test_the_functions_are_bounded_and_those_in_use_are_kept(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """More shapes than room, used in turn: the first ones stay planned (no function made and dropped at every
    call); one left unused for IDLE_S makes room for another; the counts are bounded too."""
    monkeypatch.setattr(plans, "MAX_PLANNED", 4)
    names = [kit.new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY)", "p") for _ in range(12)]
    with connect(db, planned=True) as conn:
        tables = [table_of(conn, n) for n in names]
        texts = [plan(t, rows_of(db, n, [{"id": 1}]), {})[0].text for t, n in zip(tables, names, strict=True)]

        def land(text: str, i: int) -> None:
            answer = call(conn, [text], [f'[{{"id": {i}}}]'], [1, 2])
            assert answer[0][3] is None and answer[0][2] == 1, answer

        for i in range(plans.PLAN_AFTER + 3):
            for text in texts:
                land(text, i)
        known = plans.of(conn)
        assert known is not None
        assert functions(conn) == len(known) == known.made == 4  # the first four, made once, kept
        assert [known.texts(conn, [t], count=False)[0].startswith(plans.CALL_PREFIX) for t in texts] == \
            [True] * 4 + [False] * 8
        monkeypatch.setattr(plans, "IDLE_S", 0.0)  # now every function counts as unused: room is made
        land(texts[-1], 100)
        assert functions(conn) == len(known) == 4 and known.made == 5
        assert known.texts(conn, [texts[-1]], count=False)[0].startswith(plans.CALL_PREFIX)
        assert not known.texts(conn, [texts[0]], count=False)[0].startswith(plans.CALL_PREFIX)  # the oldest went
        monkeypatch.setattr(plans, "MAX_COUNTED", 2)
        for i in range(5):  # texts met once each: counted, within the bound
            assert known.texts(conn, [f"INSERT INTO never_{i} SELECT $1"]) == [f"INSERT INTO never_{i} SELECT $1"]
            assert len(known._uses) <= 2
    assert all(kit.sql(db, f"SELECT count(*) FROM {n}") == [(plans.PLAN_AFTER + 3 + (n == names[-1]),)]
               for n in names)


def test_no_function_is_made_inside_a_transaction(db: str) -> None:
    name = kit.new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY)", "p")
    with connect(db, planned=True) as conn:
        text = plan(table_of(conn, name), rows_of(db, name, [{"id": 1}]), {})[0].text
        known = plans.of(conn)
        assert known is not None
        conn.execute("BEGIN")
        for _ in range(plans.PLAN_AFTER + 2):
            assert known.texts(conn, [text]) == [text]
        conn.execute("ROLLBACK")
        assert functions(conn) == 0 and len(known) == 0
        assert known.texts(conn, [text])[0].startswith(plans.CALL_PREFIX) and functions(conn) == 1


def test_a_text_that_cannot_be_a_function_runs_as_text(db: str) -> None:
    with connect(db, planned=True) as conn:
        broken = "INSERT INTO nowhere_at_all (id) SELECT FROM json_populate_recordset(NULL::nowhere, $1::json"
        known = plans.of(conn)
        assert known is not None
        for _ in range(plans.PLAN_AFTER + 1):
            answer = call(conn, [broken], ["[]"], [1, 2])
            assert answer[0][3] == "42601", answer  # the syntax error, from the text itself, every time
        assert functions(conn) == 0 and len(known) == 0 and broken in known._refused
