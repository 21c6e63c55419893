"""The persister: one lane per configured database, made on first use, and the one queue their answers come back on."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from kapow.config import parse_config
from kapow.contract import TableKey
from kapow.pipeline.persist import FRESH_S, Persister
from kapow.pipeline.work import TableWork, WorkResult

CONFIG = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                      '[[destinations]]\nvanity = "wh"\ndatabases = ["a", "b"]\n'
                      '[pipeline]\ncatalog_ttl_s = 17\ncatalog_max_bytes = 123456\n')
BIG = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                   '[[destinations]]\nvanity = "wh"\ndatabases = ["a", "b"]\n'
                   '[pipeline]\ncatalog_max_bytes = 8388608\n')


class Lane:
    """What the persister asks of a lane, scripted."""

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.submitted: list[TableWork] = []
        self.queued_bytes = 0
        self.stuck = 0
        self.freed = 0
        self.cancelled: list[bool] = []
        self.closed: list[float] = []
        self.is_healthy = True
        self.table_healthy: dict[TableKey, bool] = {}
        self.ok_lately = True
        self.probe_answer = True
        self.asked_within = 0.0
        self.probed = 0
        self.tables_probed: list[TableKey] = []
        self.table_probe_answer = True

    def submit(self, work: TableWork) -> None:
        self.submitted.append(work)

    def shed(self) -> int:
        return self.freed

    def stuck_bytes(self) -> int:
        return self.stuck

    def cancel(self, *, running: bool = False) -> int:
        self.cancelled.append(running)
        return 2

    def healthy(self, key: TableKey | None = None) -> bool:
        if key is None:
            return self.is_healthy
        return self.is_healthy and self.table_healthy.get(key, True)

    def recently_ok(self, within_s: float = 30.0) -> bool:
        self.asked_within = within_s
        return self.ok_lately

    def probe(self) -> bool:
        self.probed += 1
        return self.probe_answer

    def probe_table(self, key: TableKey) -> bool:
        self.tables_probed.append(key)
        return self.table_probe_answer

    def close(self, timeout: float = 0.0) -> None:
        self.closed.append(timeout)


def persister() -> tuple[Persister, list[Lane]]:
    made: list[Lane] = []

    def factory(**kw: Any) -> Lane:
        lane = Lane(**kw)
        made.append(lane)
        return lane

    return Persister(CONFIG, lane_factory=factory), made  # type: ignore[arg-type]


def key(database: str, table: str = "t") -> TableKey:
    return TableKey("wh", database, "public", table)


def work(database: str) -> TableWork:
    return TableWork(key(database), CONFIG.destinations[0], [], 1, 5)


def test_lanes_are_made_once_per_configured_database_with_what_they_share() -> None:
    p, made = persister()
    p.submit(work("a"))
    p.submit(work("a"))
    p.submit(work("b"))
    assert [(lane.kw["vanity"], lane.kw["database"], len(lane.submitted)) for lane in made] == [("wh", "a", 2),
                                                                                             ("wh", "b", 1)]
    kw = made[0].kw
    assert kw["config"] is CONFIG.destinations[0] and kw["pipeline"] is CONFIG.pipeline
    a, b = kw["catalog"], made[1].kw["catalog"]
    assert a is not b, "two databases share one catalog (and its lock)"
    assert (a._ttl, b._ttl) == (17, 17)
    assert (a._max_bytes, b._max_bytes) == (1024 * 1024, 1024 * 1024), "the split budget is floored at 1 MiB"
    assert p.lanes() == {("wh", "a"): made[0], ("wh", "b"): made[1]}
    p.lanes().clear()
    assert len(p.lanes()) == 2, "lanes() hands out a copy"
    with pytest.raises(KeyError, match="wh/c is not configured"):
        p.lane("wh", "c")
    with pytest.raises(KeyError, match="nope/a is not configured"):
        p.lane("nope", "a")
    assert len(made) == 2


def test_the_catalog_budget_is_split_between_the_configured_databases() -> None:
    made: list[Lane] = []

    def factory(**kw: Any) -> Lane:
        made.append(Lane(**kw))
        return made[-1]

    p = Persister(BIG, lane_factory=factory)  # type: ignore[arg-type]
    p.submit(work("a"))
    p.submit(work("b"))
    assert [lane.kw["catalog"]._max_bytes for lane in made] == [4 * 1024 * 1024] * 2


def test_answers_come_back_on_one_queue_all_at_once() -> None:
    p, made = persister()
    p.lane("wh", "a")
    deliver = made[0].kw["deliver"]
    started = time.monotonic()
    assert p.collect() == []
    assert time.monotonic() - started < 0.5, "collect() waits for nothing unless asked to"
    results = [WorkResult(work("a")) for _ in range(3)]
    for r in results:
        deliver(r)
    assert p.collect() == results and p.collect() == []
    started = time.monotonic()
    assert p.collect(timeout=0.2) == []
    assert 0.2 <= time.monotonic() - started < 2
    late = WorkResult(work("a"))
    threading.Timer(0.1, deliver, args=(late,)).start()
    assert p.collect(timeout=5) == [late]


def test_bytes_sheds_cancels_and_closes_sum_over_every_lane() -> None:
    p, made = persister()
    assert (p.queued_bytes, p.shed(), p.cancel()) == (0, 0, 0)
    p.lane("wh", "a")
    p.lane("wh", "b")
    made[0].queued_bytes, made[1].queued_bytes = 3, 4
    made[0].freed, made[1].freed = 10, 20
    made[0].stuck, made[1].stuck = 1, 2
    assert (p.queued_bytes, p.shed(), p.stuck_bytes()) == (7, 30, 3)
    assert p.cancel(running=True) == 4 and [lane.cancelled for lane in made] == [[True], [True]]
    assert p.cancel() == 4 and made[0].cancelled[-1] is False
    p.close(timeout=2.5)
    assert [lane.closed for lane in made] == [[2.5], [2.5]]
    p.close()
    assert [lane.closed[-1] for lane in made] == [0.0, 0.0], "by default a close waits for no lane"


def test_health_probes_a_quiet_lane_and_a_held_table_before_answering() -> None:
    p, _made = persister()
    assert p.healthy(TableKey("wh", "zzz", "public", "t")) is False, "an unconfigured destination is never healthy"
    lane = p.lane("wh", "a")
    assert isinstance(lane, Lane)
    assert p.healthy(key("a")) is True and lane.probed == 0, "a lane that wrote lately needs no probe"
    lane.ok_lately = False
    assert p.healthy(key("a")) is True and lane.probed == 1 and lane.asked_within == FRESH_S
    lane.probe_answer = False  # the circuit still closed (it opens after a few failures): the probe is the answer
    assert p.healthy(key("a")) is False and lane.probed == 2
    lane.probe_answer = True
    lane.is_healthy = False
    assert p.healthy(key("a")) is False and lane.probed == 2, "an unhealthy lane is probed by its own prober"
    lane.is_healthy, lane.ok_lately = True, True
    lane.table_healthy[key("a", "held")] = False
    lane.table_probe_answer = False
    assert p.healthy(key("a", "held")) is False and lane.tables_probed == [key("a", "held")]
    lane.table_probe_answer = True
    assert p.healthy(key("a", "held")) is True
