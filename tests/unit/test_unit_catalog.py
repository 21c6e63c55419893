"""A unit's catalog reads: one query for the tables it does not know, however long preparing its jobs takes."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from confluent_kafka import Message

from kapow.config import parse_config
from kapow.contract import Destination, TableKey
from kapow.pipeline import unit
from kapow.pipeline.unit import RECHECK_AFTER_S, TableJob, write_unit
from kapow.pipeline.work import Row, TableWork
from kapow.postgres import catalog as catalog_module
from kapow.postgres.catalog import Catalog

WH = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                  '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\n').destinations[0]


class _Info:
    encoding = "utf-8"

    def parameter_status(self, _name: str) -> str:
        return "UTF8"


def job(name: str) -> TableJob:
    key = TableKey("wh", "db", "public", name)
    dest = msgspec.convert({"vanity": "wh", "database": "db", "table": name}, Destination)
    msg = Message(topic="in", partition=0, offset=1, key=None, value=b"{}", headers=None, timestamp=(1, 1))
    return TableJob(key, WH, [TableWork(key, WH, [Row(msg, b'{"id": 1}', ("id",), dest)], 1, 10)])


def test_a_unit_of_unknown_tables_reads_them_once_however_long_its_jobs_take(monkeypatch: pytest.MonkeyPatch
                                                                             ) -> None:
    # each job takes 0.4 s (on the catalog's clock) to prepare: by the third, the unit has run over a second. The
    # tables were all read as the unit started, so none is read again alone (10,000 names took one query each)
    skew = [0.0]
    monkeypatch.setattr(catalog_module, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + skew[0]))
    validate = unit._validate

    def slow_validate(*args: Any) -> None:
        skew[0] += 0.4
        validate(*args)

    monkeypatch.setattr(unit, "_validate", slow_validate)
    reads: list[list[tuple[str, str]]] = []

    def load_tables(_conn: Any, names: list[tuple[str, str]]) -> dict[tuple[str, str], None]:
        reads.append(names)
        return dict.fromkeys(names)

    monkeypatch.setattr(unit, "load_tables", load_tables)
    conn: Any = SimpleNamespace(info=_Info())
    catalog = Catalog()
    jobs = [job(f"nosuch_{i}") for i in range(6)]
    out = write_unit(conn, catalog, jobs)
    assert reads == [[("public", f"nosuch_{i}") for i in range(6)]]
    assert [[r.failure.code.value for res in o.results or [] for r in res.failed] for o in out] == \
        [["unknown_table"]] * 6
    # an entry a second old as a unit starts is still read again before its rows are refused
    reads.clear()
    skew[0] += RECHECK_AFTER_S
    catalog.put(jobs[0].key, None)
    skew[0] += RECHECK_AFTER_S
    out = write_unit(conn, catalog, [jobs[0]])
    assert reads == [[("public", "nosuch_0")]]
