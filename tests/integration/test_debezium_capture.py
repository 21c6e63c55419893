"""Real Debezium output, decoded: a source table with a column of every common type is captured by Debezium's
PostgreSQL connector (snapshot, then inserts, updates — one leaving a TOASTed column out —, a key change and
deletes), the events are read back from Kafka, decoded by :func:`kapow.formats.debezium`, and applied through
``json_populate_recordset`` to an identical table, which must then EQUAL the source (``EXCEPT ALL`` both ways).

Run with and without the JSON converter's schema envelope. ``KAPOW_CDC_FIXTURES=DIR`` saves a few of the real
events there (tests/fixtures/debezium holds the ones the unit tests use).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from psycopg import sql

from kapow.formats.debezium import UNAVAILABLE, Change, ChangeDecoder, ChangeKind
from tests.cdc import source
from tests.cdc.capture import Event, has_key, read_until
from tests.cdc.connector import Connector
from tests.integration import kit

pytestmark = pytest.mark.integration

BULK = range(10, 60)  # ordinary rows; 10, 11 and 12 carry a TOASTed text
SENTINEL = 999_999


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A source database and a connector on it; the connector's slot and publication, its topic and the database
    are removed afterwards, whatever happened."""
    made: dict[str, Any] = {"database": kit.uid("kcdc"), "prefix": kit.uid("kcdc"), "connector": None}
    kit.create_database(made["database"])
    try:
        yield made
    finally:
        if made["connector"] is not None:
            made["connector"].drop()
        kit.drop_database(made["database"])
        try:
            kit.remove_topics([f"{made['prefix']}.public.src"])
        except Exception:
            pass


def _apply(conn: psycopg.Connection[Any], change: Change) -> None:
    """What the writer does with a change, one at a time: upsert of the columns given, or delete by the key."""
    assert change.row is not None
    row = msgspec.json.decode(change.row)
    batch = b"[" + change.row + b"]"
    if change.kind is ChangeKind.UPSERT:
        cols = sql.SQL(", ").join(map(sql.Identifier, row))
        updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in row if c != "id")
        conn.execute(sql.SQL("INSERT INTO dst ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::dst, %s) "
                             "ON CONFLICT (id) DO UPDATE SET {updates}").format(cols=cols, updates=updates),
                     (batch.decode(),))
    else:
        assert set(row) == {"id"}, f"a delete must carry the key only, got {sorted(row)}"
        conn.execute("DELETE FROM dst USING json_populate_recordset(NULL::dst, %s) k WHERE dst.id = k.id",
                     (batch.decode(),))


def _save_fixtures(events: list[Event], schemas: bool, column_types: dict[str, str]) -> None:
    target = os.environ.get("KAPOW_CDC_FIXTURES")
    if not target:
        return
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    wanted: list[dict[str, Any]] = []
    seen: set[str] = set()
    for e in events:
        value = json.loads(e.value) if e.value else None
        body = (value["payload"] if schemas else value) if value else None
        assert e.key is not None
        key = json.loads(e.key)
        kid = (key["payload"] if schemas else key)["id"]
        op = body["op"] if body else "tombstone"
        name = f"{op}-{kid}"
        wanted_ids = (1, 2, 3, 4, 5, 11, 14, 100_001, 100_003)
        if kid in wanted_ids and name not in seen and not (op == "r" and kid in (11, 14)):
            seen.add(name)
            wanted.append({"name": name, "key": e.key.decode() if e.key else None,
                           "value": e.value.decode() if e.value else None})
    suffix = "with-schema" if schemas else "without-schema"
    (out / f"events-{suffix}.jsonl").write_text("".join(json.dumps(w, ensure_ascii=False) + "\n" for w in wanted))
    (out / "column-types.json").write_text(json.dumps(column_types, indent=1) + "\n")


@pytest.mark.parametrize("schemas", [True, False], ids=["with-schema", "without-schema"])
def test_every_type_lands_equal_to_the_source(world: dict[str, Any], tmp_path: Path, schemas: bool) -> None:
    db = world["database"]
    with psycopg.connect(kit.dsn(db), autocommit=True) as conn:
        source.create_source(conn, "src")
        source.create_table(conn, "dst")
        rows = source.EDGE_ROWS + [source.bulk_row(i, months=not schemas) for i in BULK]
        for row in rows[len(source.EDGE_ROWS):][:3]:
            row["c_big"] = source.big_text(row["id"])
        source.insert(conn, "src", rows)

        # Without the envelope, ask for ISO intervals: then months survive (the bulk rows have some).
        settings = {} if schemas else {"interval.handling.mode": "string"}
        connector = Connector(tmp_path / "connect", database=db, prefix=world["prefix"], tables="public.src",
                              schemas=schemas, settings=settings)
        world["connector"] = connector
        connector.start()
        connector.wait_snapshot(timeout=120)

        source.insert(conn, "src", source.STREAMED_ROWS)
        conn.execute("UPDATE src SET c_integer = c_integer + 1 WHERE id IN (10, 11)")  # c_big unchanged: TOAST
        conn.execute("UPDATE src SET c_text = NULL, c_jsonb = '[1, \"two\"]', c_bit = B'10101010' WHERE id = 3")
        conn.execute("UPDATE src SET id = 100003 WHERE id = 14")  # a key change: delete, tombstone, create
        conn.execute("DELETE FROM src WHERE id IN (1, 13)")
        source.insert(conn, "src", [source.bulk_row(SENTINEL, months=not schemas)])

        events = read_until(f"{world['prefix']}.public.src", has_key(f"{SENTINEL}}}".encode()), timeout=120)
        column_types = source.column_types(conn, "dst")
        _save_fixtures(events, schemas, column_types)

        decoder = ChangeDecoder(column_types=column_types, max_bytes=1 << 20, max_depth=64)
        kinds: Counter[str] = Counter()
        for event in events:
            change = decoder.decode(event.value, event.key)
            kinds[change.reason or change.kind.value] += 1
            if change.kind is not ChangeKind.SKIP:
                assert change.lsn is not None and change.ts_ms is not None
                _apply(conn, change)

        snapshot = len(rows)
        streamed = len(source.STREAMED_ROWS) + 2 + 1 + 1 + 1  # inserts, TOAST updates, id 3, new key, sentinel
        assert kinds == {"upsert": snapshot + streamed, "delete": 3, "tombstone": 3}, kinds
        placeholders = [e for e in events if e.value and UNAVAILABLE.encode() in e.value]
        assert len(placeholders) == 2, "the TOAST updates must carry Debezium's placeholder, or they test nothing"

        diff = source.differences(conn, "src", "dst")
        assert diff == [], "\n".join(diff[:6])
        count = conn.execute("SELECT count(*) FROM dst").fetchone()
        assert count is not None and count[0] == snapshot + len(source.STREAMED_ROWS) + 1 - 2
