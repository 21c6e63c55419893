"""What a run lands: the Kafka records of one :class:`~kapow_bench.spec.Spec`, encoded before any clock starts,
and the state the tables must end in.

Every packet's Kafka key is its row's key, so that all operations on one row travel in one partition, in order:
that order is what KaPoW promises to apply (and what the peer relies on too). The final state is known in
advance (:class:`Expect`: rows, the sum of the keys and the sum of ``rev``), so every run proves that each
packet took effect exactly once, whatever the mode.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import msgspec

from kapow_bench.debezium_events import EventEncoder
from kapow_bench.shapes import EVENTS, EVENTS_REV, IDS, Row, Shape, event_row, id_row
from kapow_bench.spec import Spec

VANITY = "bench"


@dataclass(frozen=True)
class TableRef:
    database: str
    name: str


@dataclass(frozen=True)
class Expect:
    """The final state of all the run's tables together."""

    rows: int
    key_sum: int
    rev_sum: int = 0


@dataclass
class Workload:
    spec: Spec
    shape: Shape
    tables: list[TableRef]
    keys: list[bytes]
    values: list[bytes]
    table_of: list[int]  # the table of each packet
    rows: list[Row]  # what each packet carries (the peer's input; the latency run restamps created_at)
    expect: Expect
    prefixes: list[bytes] = field(default_factory=list)  # per table: the envelope up to "data": (none for routes)
    preload: dict[int, list[Row]] = field(default_factory=dict)  # rows in the tables before the clock starts

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def headers(self) -> bool:
        """Envelope packets carry the ``context`` header; routed records carry nothing."""
        return self.spec.route is None

    @property
    def mean_value_bytes(self) -> float:
        return sum(map(len, self.values)) / max(1, len(self.values))

    def ceiling_rows(self) -> dict[int, list[Row]]:
        """The COPY ceiling's input: N rows of this shape in the tables the packets go to. For inserts they are
        the packets' own rows; for the other modes, rows with distinct keys (COPY cannot update), so that ceiling
        is what the database takes in bulk, an upper bound rather than a like-for-like."""
        out: dict[int, list[Row]] = {}
        for i, t in enumerate(self.table_of):
            row = self.rows[i] if self.spec.stamps_rows else event_row(i, i + 1, i + 1 if self.spec.has_rev else None)
            out.setdefault(t, []).append(row)
        return out


def spread(spec: Spec, n: int, *, seed: int = 11) -> list[int]:
    """The table of each of ``n`` packets: round robin, or zipf-like (table r drawn with weight 1/(r+1)^s)."""
    if spec.tables == 1:
        return [0] * n
    if not spec.skew:
        return [i % spec.tables for i in range(n)]
    weights = list(itertools.accumulate(1 / (r + 1) ** spec.skew for r in range(spec.tables)))
    return random.Random(seed).choices(range(spec.tables), cum_weights=weights, k=n)


def destination(spec: Spec, table: TableRef) -> bytes:
    """A packet's address, in its shortest valid form (``type`` and ``schema`` take their defaults)."""
    dest: dict[str, str] = {"vanity": VANITY, "database": table.database, "table": table.name}
    if spec.mode != "insert":
        dest["mode"] = spec.mode
    if spec.version:
        dest["version"] = "rev"
    return b'{"pipeline_context":{"destinations":[' + msgspec.json.encode(dest) + b']},"data":'


def build(spec: Spec, n: int, tables: list[TableRef], *, source: str = "bench") -> Workload:
    """The records of ``n`` packets of ``spec`` addressed to ``tables`` (``source``: the Debezium topic prefix)."""
    shape = IDS if spec.size == 12 else EVENTS_REV if spec.has_rev else EVENTS
    if spec.route == "debezium":
        return _debezium(spec, n, tables[0], shape, source)
    table_of = spread(spec, n)
    preload: dict[int, list[Row]] = {}
    if spec.mode == "insert":
        rows = [id_row(i + 1) if spec.size == 12 else event_row(i, i + 1) for i in range(n)]
        expect = Expect(n, n * (n + 1) // 2)
    elif spec.mode == "upsert":
        rows, expect = _upserts(spec, n, table_of)
    else:
        rows, table_of, preload, expect = _deletes(spec, n)
    key_col = shape.key
    if spec.tables == 1:
        keys = [b"%d" % r[key_col] for r in rows]
    else:
        keys = [b"%d:%d" % (t, r[key_col]) for t, r in zip(table_of, rows, strict=True)]
    encode = msgspec.json.Encoder().encode
    if spec.route == "json":
        return Workload(spec, shape, tables, keys, [encode(r) for r in rows], table_of, rows, expect,
                        preload=preload)
    prefixes = [destination(spec, t) for t in tables]
    if spec.own_names:  # each table's rows give its own column too (the rows kept for checks stay as they are)
        tags = [spec.tag_column(t) for t in range(spec.tables)]
        values = [prefixes[t] + encode({**r, tags[t]: "x"}) + b"}" for t, r in zip(table_of, rows, strict=True)]
    else:
        values = [prefixes[t] + encode(r) + b"}" for t, r in zip(table_of, rows, strict=True)]
    return Workload(spec, shape, tables, keys, values, table_of, rows, expect, prefixes, preload)


def _upserts(spec: Spec, n: int, table_of: list[int]) -> tuple[list[Row], Expect]:
    """``n`` upserts over a key space of n/repeats keys per run (repeats inside one batch too); rev = i + 1."""
    per_table = max(1, n // spec.repeats // spec.tables)
    rng = random.Random(7)
    rows: list[Row] = []
    last: dict[tuple[int, int], int] = {}
    for i, t in enumerate(table_of):
        key = rng.randrange(per_table) + 1
        rows.append(event_row(i, key, i + 1))
        last[(t, key)] = i + 1
    return rows, Expect(len(last), sum(k for _t, k in last), sum(last.values()))


def _deletes(spec: Spec, n: int) -> tuple[list[Row], list[int], dict[int, list[Row]], Expect]:
    """A quarter more rows than packets pre-loaded, then ``n`` of them deleted by key, in a shuffled order."""
    total = n + n // 4
    counts: dict[int, int] = {}
    pairs: list[tuple[int, int]] = []
    preload: dict[int, list[Row]] = {}
    for j, t in enumerate(spread(spec, total)):
        counts[t] = counts.get(t, 0) + 1
        pairs.append((t, counts[t]))
        preload.setdefault(t, []).append(event_row(j, counts[t], 0))
    random.Random(5).shuffle(pairs)
    gone, kept = pairs[:n], pairs[n:]
    rows: list[Row] = [{"event_id": k, "rev": i + 1} if spec.version else {"event_id": k}
                       for i, (_t, k) in enumerate(gone)]
    return rows, [t for t, _k in gone], preload, Expect(len(kept), sum(k for _t, k in kept), 0)


def _debezium(spec: Spec, n: int, table: TableRef, shape: Shape, source: str) -> Workload:
    """A change stream: a snapshot of the first quarter of the key space, then creates, updates and 10 % deletes."""
    space = max(1, n // spec.repeats)
    snapshot = min(space, n // 4)
    events = EventEncoder(prefix=source, database=f"{table.database}_source", table=table.name)
    rng = random.Random(3)
    live: dict[int, int] = {}
    keys: list[bytes] = []
    values: list[bytes] = []
    rows: list[Row] = []
    for i in range(n):
        rev = i + 1
        if i < snapshot:
            key, op = i + 1, "r"
        else:
            key = rng.randrange(space) + 1
            op = "c" if key not in live else "d" if rng.random() < 0.1 else "u"
        row = event_row(i, key, rev)
        flag = ("last" if i == snapshot - 1 else "true") if op == "r" else "false"
        keys.append(events.key(key))
        values.append(events.value(i, op, row, snapshot=flag))
        rows.append(row)
        if op == "d":
            live.pop(key, None)
        else:
            live[key] = rev
    expect = Expect(len(live), sum(live), sum(live.values()))
    return Workload(spec, shape, [table], keys, values, [0] * n, rows, expect)
