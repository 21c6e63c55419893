"""Shared state under forced thread switches, and an audit that no module grows a mutable global.

A module-level list grown without a lock by the persist threads (COPY prefixes) once numbered rows wrongly under
contention: silent loss. The rule since: shared mutable state is owned by one object and guarded by its lock.
The audit below fails on any module-level dict, list or set in ``kapow`` that is not a constant.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kapow
from kapow.config import parse_config
from kapow.contract import TableKey
from kapow.pipeline.persist import Persister
from kapow.postgres.catalog import Catalog, Column, Table


@pytest.fixture
def switchy() -> Iterator[None]:
    """Switch threads every microsecond, so that any unguarded read-modify-write interleaves."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def hammer(threads: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors[0]


def table(name: str) -> Table:
    cols = {c: Column(c, "text", False, False, False) for c in ("id", "v")}
    return Table("public", name, cols, ("id",), (("id",),), False, True, True, True)


def test_catalog_accounting_holds_under_thread_switches(switchy: None) -> None:
    catalog = Catalog(max_bytes=200_000)

    def work(i: int) -> None:
        rng = random.Random(i)
        for _ in range(3000):
            key = TableKey("wh", "db", "public", f"t{rng.randrange(200)}")
            op = rng.random()
            if op < 0.5:
                catalog.put(key, table(key.table) if rng.random() < 0.9 else None)
            elif op < 0.8:
                catalog.get(key)
            elif op < 0.9:
                catalog.refresh_size(key)
            else:
                catalog.invalidate(key)

    hammer(4, work)
    entries = catalog._entries
    assert catalog.bytes == sum(size for _t, _at, size in entries.values())
    assert catalog.bytes <= 200_000


def test_one_lane_per_database_however_many_threads_ask(switchy: None) -> None:
    config = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                          '[[destinations]]\nvanity = "wh"\ndatabases = ["a", "b", "c"]\n')
    made: list[Any] = []

    def factory(**kw: Any) -> Any:
        lane = object()
        made.append((kw["vanity"], kw["database"], lane))
        return lane

    persister = Persister(config, lane_factory=factory)  # type: ignore[arg-type]
    seen: list[tuple[str, Any]] = []

    def work(i: int) -> None:
        for _ in range(2000):
            db = "abc"[i % 3]
            seen.append((db, persister.lane("wh", db)))

    hammer(6, work)
    assert len(made) == 3, f"{len(made)} lanes made for 3 databases"
    lanes = {db: lane for _v, db, lane in made}
    assert all(lane is lanes[db] for db, lane in seen)


def _kapow_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(kapow.__path__, "kapow.")
                  if not m.name.startswith("kapow.bench") and m.name != "kapow.__main__")


def _globals() -> dict[str, Any]:
    out = {}
    for name in _kapow_modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if not attr.startswith("__") and isinstance(value, dict | list | set | bytearray):
                out[f"{name}.{attr}"] = value
    return out


def _workload() -> None:
    """What the hot path and the lanes do, in-process: decode, route, sort, plan, validate, error headers."""
    from confluent_kafka import Message

    from kapow.contract import CONTEXT_VALUE, make_packet
    from kapow.deadletter.publisher import error_headers
    from kapow.pipeline.sort import Sorter
    from kapow.postgres.statements import RowIn, plan
    from kapow.postgres.validate import validate

    config = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                          '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\n')
    sorter = Sorter(config)
    msgs = []
    for i in range(3000):
        dest = {"vanity": "wh" if i % 7 else f"v{i}", "database": "db", "table": f"t{i % 50}",
                "mode": "upsert" if i % 3 else "insert"}
        value = make_packet([dest], {"id": i, f"c{i % 11}": i}) if i % 13 else b"{" * (i % 40)
        msgs.append(Message(topic="in", partition=0, offset=i, key=None, value=value,
                            headers=[("context", CONTEXT_VALUE)], timestamp=(1, 1)))
    batch, works = sorter.sort(1, msgs)
    for record in batch.errors:
        error_headers(record, 0)
    for work in works:
        t = table(work.key.table)
        t.columns.update({f"c{i}": Column(f"c{i}", "text", False, False, False) for i in range(11)})
        rows = [RowIn(r.doc, r.keys, r.dest) for r in work.rows if validate(t, config.destinations[0], r.dest,
                                                                             r.keys) is None]
        if rows:
            plan(t, rows, {i: ("id",) for i in range(len(rows))})


def test_nothing_at_module_level_grows_while_packets_flow() -> None:
    """Module-level containers may only be constants: none may change while packets are decoded, sorted,
    validated and planned (state that grows belongs to an object, under its lock)."""
    import copy

    before = {name: copy.deepcopy(value) for name, value in _globals().items()}
    _workload()
    after = _globals()
    changed = [name for name, value in after.items() if name in before and value != before[name]]
    assert not changed, f"module-level state changed while packets flowed: {changed}"
