"""The benchmark's workloads say what they claim: the final state each one promises is the one its operations
produce, spread and skew put the packets where they should, and the Debezium events it makes are read by KaPoW's
own decoder as the rows and operations they stand for, shaped like the events captured from the real connector.
A benchmark whose expected state were wrong would report "exact" for a broken writer, or a failure for a good one.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from kapow.errors import KapowError
from kapow.formats.debezium import ChangeKind, decode_change
from kapow_bench.spec import Spec
from kapow_bench.workload import Expect, TableRef, build, spread

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "debezium"
TABLES = [TableRef(f"db{t % 4}", f"t{t}") for t in range(100)]


def replay(work_rows: list[dict[str, object]], ops: list[str], tables: list[int],
           preload: dict[int, list[dict[str, object]]]) -> Expect:
    """Apply the operations one by one, in order, as the table would: the state a correct writer must reach."""
    state = {(t, int(r["event_id"])): int(r.get("rev", 0) or 0) for t, rs in preload.items() for r in rs}  # type: ignore[call-overload]
    for row, op, t in zip(work_rows, ops, tables, strict=True):
        key = (t, int(row["event_id"]))  # type: ignore[call-overload]
        if op == "delete":
            state.pop(key, None)
        else:
            state[key] = int(row.get("rev", 0) or 0)  # type: ignore[call-overload]
    return Expect(len(state), sum(k for _t, k in state), sum(state.values()))


@pytest.mark.parametrize("spec", [Spec(), Spec(mode="upsert"), Spec(mode="upsert", version=True),
                                  Spec(mode="delete"), Spec(mode="upsert", tables=100, databases=4, skew=1.0),
                                  Spec(mode="delete", tables=100, databases=4), Spec(route="json", mode="upsert")])
def test_expected_state_is_what_the_operations_produce(spec: Spec) -> None:
    tables = TABLES if spec.tables > 1 else TABLES[:1]
    work = build(spec.check(), 4000, tables)
    ops = ["delete" if spec.mode == "delete" else "write"] * work.n
    assert work.expect == replay(work.rows, ops, work.table_of, work.preload)
    if spec.mode == "upsert":  # keys repeat, also inside one batch of the writer's size
        assert work.expect.rows < work.n / 2
        assert len({r["event_id"] for r in work.rows[:500]}) < 500
    assert len(set(zip(work.table_of, work.keys, strict=True))) == len(set(work.keys))  # a key stays in one table


def test_envelope_packets_carry_mode_version_and_table() -> None:
    work = build(Spec(mode="upsert", version=True, tables=100, databases=4).check(), 300, TABLES)
    for i in (0, 1, 299):
        packet = msgspec.json.decode(work.values[i])
        dest = packet["pipeline_context"]["destinations"][0]
        table = TABLES[work.table_of[i]]
        assert dest == {"vanity": "bench", "database": table.database, "table": table.name, "mode": "upsert",
                        "version": "rev"}
        assert packet["data"] == work.rows[i]
    one = [TableRef("kb_1a2b3c4d", "bench_events")]  # the names a run really uses, for the sizes
    assert 240 <= build(Spec(), 1000, one).mean_value_bytes <= 270
    assert build(Spec(size=12), 1000, [TableRef("kb_1a2b3c4d", "bench_ids")]).mean_value_bytes < 150
    routed = build(Spec(route="json").check(), 10, TABLES[:1])
    assert msgspec.json.decode(routed.values[3]) == routed.rows[3] and not routed.headers


def test_own_names_give_each_table_s_rows_its_own_column_and_keep_the_rest() -> None:
    work = build(Spec(tables=100, databases=4, own_names=True).check(), 300, TABLES)
    for i in (0, 1, 299):
        data = msgspec.json.decode(work.values[i])["data"]
        t = work.table_of[i]
        assert data == {**work.rows[i], f"tag_{t:05d}": "x"}  # the rows kept for the checks stay as they are
    assert len({tuple(msgspec.json.decode(v)["data"]) for v in work.values}) == 100


def test_spread_is_even_or_skewed_over_every_table() -> None:
    even = Counter(spread(Spec(tables=100, databases=4), 10_000))
    assert len(even) == 100 and set(even.values()) == {100}
    skewed = Counter(spread(Spec(tables=100, databases=4, skew=1.0), 10_000))
    top = skewed.most_common(1)[0]
    assert top[0] == 0 and 1500 < top[1] < 2600  # 1/H(100) ≈ 19 % of the traffic goes to the first table
    assert skewed[0] > 5 * skewed[20]


def test_debezium_events_decode_as_the_operations_they_stand_for() -> None:
    work = build(Spec(route="debezium").check(), 2000, TABLES[:1])
    state: dict[int, int] = {}
    kinds: Counter[str] = Counter()
    for i, (key, value) in enumerate(zip(work.keys, work.values, strict=True)):
        change = decode_change(value, key, max_bytes=1 << 20, max_depth=32)
        kinds[change.kind.value] += 1
        assert change.row is not None and change.lsn is not None
        row = msgspec.json.decode(change.row)
        if change.kind is ChangeKind.DELETE:
            assert row == {"event_id": json.loads(key)["payload"]["event_id"]}
            state.pop(row["event_id"], None)
        else:
            assert change.kind is ChangeKind.UPSERT
            assert row == {**work.rows[i], "note": None}  # decimals and timestamps back to the row they came from
            state[row["event_id"]] = row["rev"]
    assert kinds["delete"] > 0 and kinds["upsert"] > kinds["delete"]
    assert Expect(len(state), sum(state), sum(state.values())) == work.expect


def test_debezium_events_are_shaped_like_the_real_connector_s() -> None:
    real = [json.loads(line) for line in (FIXTURES / "events-with-schema.jsonl").read_text().splitlines()]
    real_value = json.loads(next(r["value"] for r in real if r["name"].startswith("u-")))
    work = build(Spec(route="debezium").check(), 600, TABLES[:1])
    ours = json.loads(work.values[-1])
    assert list(ours) == ["schema", "payload"] == list(real_value)
    assert list(ours["payload"]) == list(real_value["payload"])
    assert list(ours["payload"]["source"]) == list(real_value["payload"]["source"])
    assert [f["field"] for f in ours["schema"]["fields"]] == [f["field"] for f in real_value["schema"]["fields"]]
    source = next(f for f in ours["schema"]["fields"] if f["field"] == "source")
    assert source == next(f for f in real_value["schema"]["fields"] if f["field"] == "source")
    key = json.loads(work.keys[0])
    assert list(key) == ["schema", "payload"] and key["schema"]["name"].endswith(".Key")


@pytest.mark.parametrize(("spec", "words"), [
    (Spec(size=12, mode="upsert"), "inserts only"), (Spec(route="json", tables=2, databases=1), "--tables 1"),
    (Spec(route="debezium", mode="upsert"), "its own operation"), (Spec(version=True), "--mode upsert"),
    (Spec(tables=2, databases=3), "no more databases"), (Spec(mode="merge"), "choose from"),
    (Spec(own_names=True), "--tables N"), (Spec(tables=2, size=12, own_names=True), "250 B"),
])
def test_impossible_workloads_are_refused_in_one_line(spec: Spec, words: str) -> None:
    with pytest.raises(KapowError, match=words) as exc:
        spec.check()
    assert "\n" not in str(exc.value)
