"""10,000+ hostile records through a running writer, good traffic mixed in: no exit, every record accounted for.

Each record carries a unique key. At the end every record is in exactly one place: a row (good packets, and hostile
ones that happen to be valid), nowhere because it was filtered (no pipeline header, or one that is not the
expected JSON), or exactly once on an error topic with its value byte for byte (or cut to fit, and saying so).
The generator is seeded, so a failure is reproducible; KAPOW_FUZZ_SEED picks another seed.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable

from confluent_kafka import Producer

from kapow.contract import CONTEXT_VALUE, PacketDecoder
from tests.integration import kit

HOSTILE = 10_000
GOOD = 2_000
SEED = int(os.environ.get("KAPOW_FUZZ_SEED", "20261125"))
DDL = ("CREATE TABLE good (id bigint PRIMARY KEY, v text NOT NULL);"
       "CREATE TABLE hostile (k text PRIMARY KEY, v text, n numeric, j jsonb)")

Record = tuple[bytes, bytes | None, list[tuple[str, bytes | None]]]  # key, value, headers


def deep(n: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * n + close * n


class Generator:
    def __init__(self, db: str, seed: int) -> None:
        self.db = db
        self.rng = random.Random(seed)

    def dest(self, **over: object) -> dict[str, object]:
        return {"type": "postgres", "vanity": "wh", "database": self.db, "schema": "public", "table": "hostile",
                **over}

    def packet(self, key: bytes, data_tail: bytes = b'"v":"x"', dests: bytes | None = None) -> bytes:
        dests = dests if dests is not None else json.dumps([self.dest()]).encode()
        return b'{"pipeline_context":{"destinations":' + dests + b'},"data":{"k":' + json.dumps(
            key.decode()).encode() + b"," + data_tail + b"}}"

    def one(self, key: bytes) -> Record:
        rng = self.rng
        header = [("context", CONTEXT_VALUE)]
        kind = rng.randrange(16)
        if kind == 0:
            return key, rng.randbytes(rng.randrange(0, 300)), header
        if kind == 1:
            return key, rng.randbytes(rng.randrange(0, 300)), []
        if kind == 2:
            return key, self.packet(key, b'"j":' + deep(rng.choice([33, 500, 1000, 5000]))), header
        if kind == 3:
            return key, self.packet(key), [("context", b'{"consumer":' + deep(rng.choice([100, 1000, 5000])) + b"}")]
        if kind == 4:
            return key, self.packet(key, b'"v":' + json.dumps("s" * rng.randrange(10_000, 400_000)).encode()), header
        if kind == 5:
            number = rng.choice([b"1e400", b"-1e400", b"1e1000000", b"123456789012345678901234567890.5", b"1e-400"])
            return key, self.packet(key, b'"n":' + number), header
        if kind == 6:
            many: list[tuple[str, bytes | None]] = [(f"h{i}", rng.randbytes(8) if i % 3 else None) for i in
                                                    range(rng.randrange(100, 1000))]
            return key, self.packet(key), [*many, ("context", CONTEXT_VALUE), ("kapow-mine", b"client's own")]
        if kind == 7:
            return key, self.packet(key, b'"v":"a\\u0000b"'), header
        if kind == 8:
            return key, self.packet(key, b'"v":"' + rng.choice([b"\\ud800", b"\\udfff x", b"\xff\xfe", b"\xed\xa0\x80",
                                                                  b"\x00", b"\xc0\xaf"]) + b'"'), header
        if kind == 9:  # a mutated valid packet: bytes inserted, dropped or replaced after its key
            value = bytearray(self.packet(key, b'"v":"mutate me","n":12.5,"j":{"a":[1,2,{"b":null}]}'))
            start = value.index(b'"v"')
            for _ in range(rng.randrange(1, 6)):
                at = rng.randrange(start, len(value))
                op = rng.randrange(3)
                if op == 0:
                    value[at:at] = rng.randbytes(rng.randrange(1, 4))
                elif op == 1:
                    del value[at:at + rng.randrange(1, 4)]
                else:
                    value[at] = rng.randrange(256)
            return key, bytes(value), header
        if kind == 10:
            over = rng.choice([{"vanity": "nope"}, {"database": "nope"}, {"table": "nope"},
                               {"schema": "pg_catalog", "table": "pg_class"}, {"table": 'x";drop'},
                               {"vanity": "v" * 300_000}, {"mode": "delete"}, {"type": "s3"}])
            return key, self.packet(key, dests=json.dumps([self.dest(**over)]).encode()), header
        if kind == 11:
            dests = json.dumps([self.dest(table=f"t{i}") for i in range(rng.choice([17, 100, 2000]))]).encode()
            return key, self.packet(key, dests=dests), header
        if kind == 12:
            return key, self.packet(key, b'"nope":1'), header
        if kind == 13:
            return key, None, header
        if kind == 14:
            return key, b'{"pipeline_context":' + deep(3000, b"{\"a\":", b"}") + b',"data":{"k":1}}', header
        return key, self.packet(key, b'"v":"fine","n":"12.50","j":{"ok":true}'), header


def test_hostile_records_never_stop_the_writer_and_every_one_is_accounted_for(
        make_env: Callable[..., kit.Env], writers: Callable[[kit.Env], kit.WriterProcess]) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, DDL)
    env.pipeline = {"batch_max_messages": 2000}
    gen = Generator(db, SEED)
    records: list[Record] = []
    good: set[int] = set()
    for i in range(HOSTILE + GOOD):
        key = b"k%06d" % i
        if i % 6 == 0 and i // 6 < GOOD:
            good.add(i)
            value = kit.packets([kit.dest(db, "good")], [{"id": i, "v": "good"}])[0]
            records.append((key, value, [("context", CONTEXT_VALUE)]))
        else:
            records.append(gen.one(key))
    writer = writers(env)
    writer.wait_assigned()
    producer = Producer({"bootstrap.servers": kit.BOOTSTRAP, "compression.type": "lz4",
                         "message.max.bytes": 10_000_000, "linger.ms": 20})
    for key, value, headers in records:
        while True:
            try:
                producer.produce(env.topic, key=key, value=value, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    ends = kit.end_offsets(env.topic)

    def caught_up() -> bool:
        assert writer.alive(), f"the writer exited on hostile input:\n{writer.log()[-3000:]}"
        committed = kit.committed_offsets(env.group, env.topic)
        return all(committed.get(p, 0) >= e for p, e in ends.items())

    kit.wait_for(caught_up, 240, "every offset committed", interval=1.0)
    time.sleep(1)
    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=32, max_destinations=16)
    errors = kit.read_all(env.user_errors) + kit.read_all(env.system_errors, allow_missing=True)
    by_key: dict[bytes | None, list[kit.Record]] = {}
    for r in errors:
        by_key.setdefault(r.key, []).append(r)
    good_ids = {int(r[0]) for r in kit.sql(db, "SELECT id FROM good")}
    hostile_keys = {r[0].encode() for r in kit.sql(db, "SELECT k FROM hostile")}
    filtered = landed = failed = 0
    for i, (key, value, headers) in enumerate(records):
        on_errors = by_key.get(key, [])
        in_table = (i in good_ids) if i in good else key in hostile_keys
        if not decoder.is_pipeline_packet(headers):
            assert not on_errors and not in_table, f"{key!r}: filtered traffic was handled"
            filtered += 1
            continue
        assert len(on_errors) + int(in_table) == 1, (
            f"{key!r}: on {len(on_errors)} error records and {'in' if in_table else 'not in'} the table")
        if in_table:
            landed += 1
            continue
        failed += 1
        record = on_errors[0]
        if "kapow-value-truncated" in record.headers:
            assert int(record.headers["kapow-value-truncated"]) == len(value or b"")
        else:
            assert record.value == value, f"{key!r}: the error record's value is not the original, byte for byte"
        assert len(record.headers.get("kapow-error-message", b"")) <= 1500
        if any(k == "kapow-mine" for k, _ in headers):
            assert record.headers["kapow-mine"] == b"client's own"
    assert len(good_ids) == GOOD, f"{GOOD - len(good_ids)} good packets did not land"
    assert filtered > 500 and failed > 5000 and landed > GOOD, (filtered, failed, landed)
    assert writer.stop() == 0, writer.log()[-3000:]
