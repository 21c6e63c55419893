"""Inserts by COPY (kapow.postgres.writer): what lands is exactly what the JSON statement lands, and every way a
COPY can fail falls back to it with the same rows and errors, a locked table waited for once, one transaction."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import psycopg
import pytest
from confluent_kafka import Message
from psycopg.pq import TransactionStatus

from kapow.contract import Destination, PacketDecoder, TableKey
from kapow.errors import ErrorCode
from kapow.pipeline.unit import TableJob, write_unit
from kapow.pipeline.work import Row, TableWork
from kapow.postgres.catalog import Catalog, Table, load_tables
from kapow.postgres.statements import RowIn, plan
from kapow.postgres.writer import COPY_MIN_ROWS, TableOutcome, apply_unit, configure_connection
from tests.integration import kit

pytestmark = pytest.mark.integration

TYPES = """
CREATE TYPE {name}_mood AS ENUM ('ok', 'meh', 'bad');
CREATE DOMAIN {name}_pos AS integer CHECK (VALUE > 0);
CREATE TABLE {name} (
    id bigint PRIMARY KEY, t text, v varchar(40), c char(3), i integer, s smallint, n numeric(14,3), nn numeric,
    f double precision, b boolean, ts timestamptz, tn timestamp, d date, u uuid, m {name}_mood, p {name}_pos,
    r int4range, ip inet, iv interval, landed timestamptz DEFAULT now()
)
"""
TEXTS = ["", "null", "NULL", "a,b", " padded ", "é漢字🙂", "tab-less", "x" * 40, "\\N?", 'say "hi"', "semi;colon",
         "line\nbreak", "back\\slash", "'quoted'", ",", "#"]


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    with kit.scratch_database("kcopy") as name:
        yield name


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(kit.dsn(db)) as c:
        configure_connection(c, statement_timeout_ms=10_000, lock_timeout_ms=400)
        yield c


def new_table(db: str, ddl: str = TYPES) -> str:
    return kit.new_table(db, ddl, "c")


def table_of(conn: psycopg.Connection[Any], name: str) -> Table:
    table = load_tables(conn, [("public", name)])[("public", name)]
    assert table is not None
    return table


def rows_of(db: str, name: str, docs: list[bytes]) -> list[RowIn]:
    """Rows as sort makes them: names and values from the packet decoder (values None when it read them the
    general way)."""
    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=16, max_destinations=4)
    dest = Destination("wh", db, name)
    out = []
    for doc in docs:
        keys = decoder.keys(doc)
        out.append(RowIn(doc, keys, dest, decoder.values))
    return out


def both_ways(db: str, conn: psycopg.Connection[Any], ddl: str,
              docs: list[bytes]) -> list[tuple[str, TableOutcome]]:
    """``docs`` into two new tables of ``ddl``: COPY allowed in the first, not in the second; (table, outcome)."""
    out = []
    for copy in (True, False):
        name = new_table(db, ddl)
        table = table_of(conn, name)
        outcome = apply_unit(conn, [plan(table, rows_of(db, name, docs), {})], [True], [table if copy else None])[0]
        assert not outcome.copied or copy
        out.append((name, outcome))
    return out


def random_row(rng: random.Random, i: int) -> dict[str, Any]:
    """One row of JSON scalars each column's input function takes, every column present (one shape)."""
    text = rng.choice([t for t in TEXTS if '"' not in t and "\\" not in t and "\n" not in t])
    return {
        "id": i, "t": text, "v": rng.choice(["", "x", "null", "a,b", "é"]) * rng.randrange(3),
        "c": rng.choice(["ab", "abc", "", None]), "i": rng.choice([0, -1, 2**31 - 1, None, "42"]),
        "s": rng.choice([1, -32768, "7"]), "n": rng.choice(["12.345", "-0.5", 7, "1e3", None, "00012.100"]),
        "nn": rng.choice(["123456789012345678901234567890.123456789", 5, "-0", "NaN"]),
        "f": rng.choice([1, "2.5", "-0", "1e-300", "Infinity", None]), "b": rng.choice([True, False, "yes", "f", None]),
        "ts": rng.choice(["2026-11-24T10:00:00.123456Z", "2026-11-24 10:00:00+02", None]),
        "tn": "2026-01-02 03:04:05.678", "d": rng.choice(["2026-02-28", "epoch"]),
        "u": rng.choice(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", None]), "m": rng.choice(["ok", "bad"]),
        "p": rng.choice([1, 99, "5"]), "r": rng.choice(["[1,5)", "empty", None]), "ip": "10.0.0.1/32",
        "iv": rng.choice(["1 day", "P1DT2H"]),
    }


def contents(db: str, name: str) -> list[tuple[Any, ...]]:
    cols = ["id", "t", "v", "c", "i", "s", "n", "nn", "f", "b", "ts", "tn", "d", "u", "m", "p", "r", "ip", "iv"]
    return kit.sql(db, f"SELECT {', '.join(c + '::text' for c in cols)} FROM {name} ORDER BY id")  # as text: NaN = NaN


def test_copy_lands_exactly_what_the_json_statement_lands(db: str, conn: psycopg.Connection[Any]) -> None:
    rng = random.Random(14)
    docs = [msgspec.json.encode(random_row(rng, i)) for i in range(COPY_MIN_ROWS + 300)]
    rows = rows_of(db, "t", docs)
    assert sum(r.values is not None for r in rows) >= len(rows) - 2  # the shape read all but the first two
    (copied, by_copy), (by_json, by_statement) = both_ways(db, conn, TYPES, docs)
    assert by_copy.copied and by_copy.failure is None and by_statement.failure is None
    got, want = contents(db, copied), contents(db, by_json)
    diffs = [(g[0], i, g[i], w[i]) for g, w in zip(got, want, strict=True) for i in range(len(g)) if g[i] != w[i]]
    assert not diffs, diffs[:5]
    assert len(got) == len(want) == len(docs)


@pytest.mark.parametrize("odd", ['say "hi"', "back\\slash", "line\nbreak", "nul\u0000", "\u0007bell"])
def test_a_string_the_csv_cannot_carry_sends_the_table_as_json(db: str, conn: psycopg.Connection[Any],
                                                               odd: str) -> None:
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, t text)")
    table = table_of(conn, name)
    docs = [msgspec.json.encode({"id": i, "t": odd if i == 100 else f"r{i}"}) for i in range(COPY_MIN_ROWS)]
    outcome = apply_unit(conn, [plan(table, rows_of(db, name, docs), {})], [True], [table])[0]
    assert not outcome.copied and outcome.copy_failed  # not formatted again for a while (unit.py pauses it)
    if "\u0000" in odd:  # text cannot hold NUL: the JSON statement refuses the table, as before
        assert outcome.failure is not None and outcome.failure.code is ErrorCode.BAD_VALUE
        return
    assert outcome.failure is None and outcome.affected == [COPY_MIN_ROWS]
    assert kit.sql(db, f"SELECT t FROM {name} WHERE id = 100") == [(odd,)]


def test_json_array_and_composite_columns_are_never_copied(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, j json, jb jsonb, a text[])")
    table = table_of(conn, name)
    docs = [msgspec.json.encode({"id": i, "j": "abc", "jb": 5, "a": None}) for i in range(COPY_MIN_ROWS)]
    outcome = apply_unit(conn, [plan(table, rows_of(db, name, docs), {})], [True], [table])[0]
    assert not outcome.copied and not outcome.copy_failed and outcome.failure is None
    assert kit.sql(db, f"SELECT j::text, jb::text FROM {name} WHERE id = 3") == [('"abc"', "5")]


def test_a_duplicate_rolls_the_copy_back_and_the_table_is_applied_on_conflict(
        db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, t text)")
    kit.sql(db, f"INSERT INTO {name} VALUES (7, 'there first')")
    table = table_of(conn, name)
    docs = [msgspec.json.encode({"id": i, "t": f"r{i}"}) for i in range(COPY_MIN_ROWS + 10)]
    outcome = apply_unit(conn, [plan(table, rows_of(db, name, docs), {})], [True], [table])[0]
    assert outcome.copy_failed and not outcome.copied and outcome.conflicted and outcome.failure is None
    assert outcome.affected == [COPY_MIN_ROWS + 9]
    assert kit.scalar(db, f"SELECT count(*) FROM {name}") == COPY_MIN_ROWS + 10
    assert kit.sql(db, f"SELECT t FROM {name} WHERE id = 7") == [("there first",)]


def test_a_bad_value_rolls_back_the_copy_and_the_table_fails_as_by_statement(
        db: str, conn: psycopg.Connection[Any]) -> None:
    ddl = "CREATE TABLE {name} (id bigint PRIMARY KEY, q integer CHECK (q >= 0))"
    docs = [msgspec.json.encode({"id": i, "q": "many" if i == 200 else i}) for i in range(COPY_MIN_ROWS + 10)]
    failures = []
    for (name, outcome), copy in zip(both_ways(db, conn, ddl, docs), (True, False), strict=True):
        assert outcome.copy_failed is copy and not outcome.copied
        assert outcome.failure is not None
        failures.append((outcome.failure.code, outcome.failure.message))
        assert kit.scalar(db, f"SELECT count(*) FROM {name}") == 0  # the table rolled back to its fence
    assert failures[0] == failures[1]


def test_a_locked_table_is_waited_for_once_and_its_neighbour_lands(db: str, conn: psycopg.Connection[Any]) -> None:
    locked = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, t text)")
    free = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, t text)")
    tables = [table_of(conn, locked), table_of(conn, free)]
    docs = [msgspec.json.encode({"id": i, "t": f"r{i}"}) for i in range(COPY_MIN_ROWS)]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(kit.dsn(db)) as other:
            other.execute(f"LOCK TABLE {locked} IN ACCESS EXCLUSIVE MODE")
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        outcomes = apply_unit(conn, [plan(t, rows_of(db, t.name, docs), {}) for t in tables], [True, True], tables)
        took = time.monotonic() - started
    finally:
        release.set()
        holder.join()
    assert outcomes[0].failure is not None and outcomes[0].copy_failed and not outcomes[0].copied
    assert "lock" in outcomes[0].failure.message
    assert outcomes[1].copied and outcomes[1].affected == [COPY_MIN_ROWS]
    assert took < 2 * 0.4, f"the lock was waited for twice ({took:.2f} s)"
    assert kit.scalar(db, f"SELECT count(*) FROM {free}") == COPY_MIN_ROWS


@pytest.mark.parametrize("slow_rows", [1, COPY_MIN_ROWS])
def test_a_statement_timeout_rolls_the_unit_back(db: str, slow_rows: int) -> None:
    """A slow trigger on the second table: its statement after a COPY (1 row) or its own COPY (COPY_MIN_ROWS)
    is canceled. The call fails, nothing of the unit stays (the first table's COPY neither), and the connection
    is idle (the unit's BEGIN is sent with its first statement, so its ROLLBACK is KaPoW's to send)."""
    copied = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, t text)")
    slow = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, t text)")
    kit.sql(db, f"CREATE FUNCTION {slow}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(2);"
                f" RETURN NEW; END $$; CREATE TRIGGER s BEFORE INSERT ON {slow} FOR EACH ROW EXECUTE FUNCTION"
                f" {slow}_slow()")
    with psycopg.connect(kit.dsn(db)) as c:
        configure_connection(c, statement_timeout_ms=500, lock_timeout_ms=400)
        tables = [table_of(c, copied), table_of(c, slow)]
        many = [msgspec.json.encode({"id": i, "t": "x"}) for i in range(COPY_MIN_ROWS)]
        statements = [plan(tables[0], rows_of(db, copied, many), {}),
                      plan(tables[1], rows_of(db, slow, many[:slow_rows]), {})]
        with pytest.raises(psycopg.errors.QueryCanceled):
            apply_unit(c, statements, [True, True], tables)
        assert c.info.transaction_status == TransactionStatus.IDLE  # rolled back: the pool takes it back as is
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert kit.scalar(db, f"SELECT count(*) FROM {copied}") == 0


def test_a_table_whose_copy_failed_is_written_by_statement_for_a_while(db: str,
                                                                       conn: psycopg.Connection[Any]) -> None:
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, q integer)")
    key = TableKey("wh", db, "public", name)
    dest = Destination("wh", db, name)
    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=16, max_destinations=4)

    def work(seq: int, bad: bool) -> TableWork:
        rows = []
        for i in range(COPY_MIN_ROWS):
            doc = msgspec.json.encode({"id": seq * 10_000 + i, "q": "x" if bad and i == 5 else i})
            keys = decoder.keys(doc)
            msg = Message(topic="in", partition=0, offset=seq * 10_000 + i, value=doc, timestamp=(1, 1))
            rows.append(Row(msg, doc, keys, dest, None, decoder.values))
        return TableWork(key, config, rows, seq, 10)

    catalog = Catalog()
    config = _config(db)
    first = write_unit(conn, catalog, [TableJob(key, config, [work(1, bad=True)])])
    assert first[0].results is not None and [r.failure.code for r in first[0].results[0].failed] == [
        ErrorCode.BAD_VALUE]
    _cached, table = catalog.get(key)
    assert table is not None and table.copy_from > time.monotonic() + 30
    assert kit.scalar(db, f"SELECT count(*) FROM {name}") == COPY_MIN_ROWS - 1


def test_a_table_with_row_level_security_is_never_copied(db: str, conn: psycopg.Connection[Any]) -> None:
    name = new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY); ALTER TABLE {name} ENABLE ROW LEVEL SECURITY")
    assert table_of(conn, name).row_security


def _config(db: str) -> Any:
    from kapow.config import parse_config

    cfg = parse_config(f'[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n[[destinations]]\nvanity = "wh"\n'
                       f'databases = ["{db}"]\n')
    return cfg.destinations[0]


def test_a_failed_copy_after_a_good_one_keeps_the_good_one(db: str, conn: psycopg.Connection[Any]) -> None:
    good, dup = (new_table(db, "CREATE TABLE {name} (id bigint PRIMARY KEY, t text)") for _ in range(2))
    kit.sql(db, f"INSERT INTO {dup} VALUES (5, 'there first')")
    tables = [table_of(conn, good), table_of(conn, dup)]
    docs = [msgspec.json.encode({"id": i, "t": f"r{i}"}) for i in range(COPY_MIN_ROWS)]
    outcomes = apply_unit(conn, [plan(t, rows_of(db, t.name, docs), {}) for t in tables], [True, True], tables)
    assert outcomes[0].copied and outcomes[0].affected == [COPY_MIN_ROWS]
    assert outcomes[1].copy_failed and outcomes[1].conflicted and outcomes[1].affected == [COPY_MIN_ROWS - 1]
    assert kit.scalar(db, f"SELECT count(*) FROM {good}") == COPY_MIN_ROWS
    assert kit.scalar(db, f"SELECT count(*) FROM {dup}") == COPY_MIN_ROWS


def test_a_negative_zero_lands_as_the_client_wrote_it(db: str, conn: psycopg.Connection[Any]) -> None:
    """msgspec reads JSON's -0 as the integer 0: a text or float column must still get '-0' / -0.0."""
    ddl = "CREATE TABLE {name} (id bigint PRIMARY KEY, t text, f double precision, n numeric)"
    zeros = [b'{"id": %d, "t": 0, "f": 0, "n": 0}' % i for i in range(COPY_MIN_ROWS)]
    negative = [*zeros[:-1], b'{"id": 999999, "t": -0, "f": -0 , "n":-0}']
    for docs, copies in ((zeros, True), (negative, False)):
        (first, copy), (second, statement) = both_ways(db, conn, ddl, docs)
        assert copy.copied is copies and not statement.copied
        landed = [kit.sql(db, f"SELECT id, t, f::text, n::text FROM {name} ORDER BY id") for name in (first, second)]
        assert landed[0] == landed[1]
    assert landed[1][-1] == (999999, "-0", "-0", "0")


def test_a_database_not_in_utf8_is_never_copied_into() -> None:
    with kit.scratch_database("kcopylatin", encoding="LATIN1") as name:
        kit.sql(name, "CREATE TABLE t (id bigint PRIMARY KEY, s text)")
        with psycopg.connect(kit.dsn(name)) as c:
            configure_connection(c, statement_timeout_ms=10_000, lock_timeout_ms=400)
            table = table_of(c, "t")
            docs = [msgspec.json.encode({"id": i, "s": "café"}) for i in range(COPY_MIN_ROWS)]
            outcome = apply_unit(c, [plan(table, rows_of(name, "t", docs), {})], [True], [table])[0]
            assert not outcome.copied and outcome.failure is None
            assert c.execute("SELECT s, octet_length(s) FROM t WHERE id = 1").fetchone() == ("café", 4)


def test_a_domain_column_a_row_leaves_out_takes_its_default_both_ways(db: str, conn: psycopg.Connection[Any]) -> None:
    """A NOT NULL domain column a row leaves out takes its default, by COPY and by statement alike (the statement
    read whole rows of the table's type, whose left-out domain was a NULL: every such packet was refused)."""
    ddl = ("CREATE DOMAIN {name}_nn AS integer NOT NULL; CREATE DOMAIN {name}_ok AS integer CHECK (VALUE > 0);"
           " CREATE TABLE {name} (id bigint PRIMARY KEY, w {name}_nn DEFAULT 1, k {name}_ok)")
    given = [msgspec.json.encode({"id": i, "w": 2, "k": 3}) for i in range(COPY_MIN_ROWS)]
    left_out = [msgspec.json.encode({"id": i, "k": 3}) for i in range(COPY_MIN_ROWS)]
    for docs in (given, left_out):
        ways = both_ways(db, conn, ddl, docs)
        assert ways[0][1].copied is True
        results = [(outcome.failure.message.replace(name, "T") if outcome.failure else None,
                    kit.scalar(db, f"SELECT count(*) FROM {name}"),
                    kit.scalar(db, f"SELECT min(w) FROM {name}")) for name, outcome in ways]
        assert results == [(None, COPY_MIN_ROWS, 2 if docs is given else 1)] * 2


def test_a_character_a_latin1_database_cannot_store_fails_its_row_alone() -> None:
    """psycopg refused to encode the whole unit's text for one such character: no table of the unit landed, an
    internal error, again and again. Now the row is the client's bad_value and the others land."""
    with kit.scratch_database("kcopylatin", encoding="LATIN1") as name:
        kit.sql(name, "CREATE TABLE t (id bigint PRIMARY KEY, s text)")
        key = TableKey("wh", name, "public", "t")
        dest = Destination("wh", name, "t")
        decoder = PacketDecoder(max_bytes=1 << 20, max_depth=16, max_destinations=4)
        for n in (10, COPY_MIN_ROWS + 5):
            rows = []
            for i in range(n):
                doc = msgspec.json.encode({"id": n * 10_000 + i, "s": "漢" if i == 3 else "café"})
                keys = decoder.keys(doc)
                msg = Message(topic="in", partition=0, offset=i, value=doc, timestamp=(1, 1))
                rows.append(Row(msg, doc, keys, dest, None, decoder.values))
            config = _config(name)
            with psycopg.connect(kit.dsn(name)) as c:
                configure_connection(c, statement_timeout_ms=10_000, lock_timeout_ms=400)
                (outcome,) = write_unit(c, Catalog(), [TableJob(key, config, [TableWork(key, config, rows, 1, 10)])])
            assert outcome.failure is None and outcome.results is not None
            (result,) = outcome.results
            assert result.landed == n - 1
            assert [(r.failure.code, r.failure.message) for r in result.failed] == [
                (ErrorCode.BAD_VALUE, "data holds a character the database's encoding (LATIN1) cannot store")]
        assert kit.sql(name, "SELECT count(*), min(s) FROM t") == [(10 - 1 + COPY_MIN_ROWS + 5 - 1, "café")]
