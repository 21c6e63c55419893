"""``python -m kapow_bench.floor``: what the Kafka client and the sort step cost a packet, with no database at all.

The one-table rate is one core's worth of the writer's CPU (docs/BENCHMARKS.md, *What bounds one table*). This
measures the part of that CPU which no change to KaPoW's database side can remove: the same pre-filled topic the
benchmark writes, read by a consumer with the writer's own settings and garbage-collector tuning, in stages:

- ``consume``: ``consume()`` batches of 10,000 and their release, nothing else (confluent-kafka's ``Message``
  objects made and freed, librdkafka's threads included);
- ``sort``: the same, each batch also sorted by the writer's :class:`~kapow.pipeline.sort.Sorter` (header check,
  envelope split, destinations, the values a COPY sends), its rows then let go as the writer does.

CPU is the process's (user + system, every thread) from the first batch to the last, divided by the packets read
in between; the wall rate is printed too (a stage that is not CPU-bound is fetch-bound). Stages alternate so that
drift in the machine's speed falls on both. One line per stage and round; medians at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence

from kapow_bench.env import BOOTSTRAP
from kapow_bench.publish import publish
from kapow_bench.runs import prepare
from kapow_bench.scratch import Scratch
from kapow_bench.spec import Spec

BATCH = 10_000
STAGES = ("consume", "sort")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def stage(name: str, topic: str, n: int, config_text: str) -> tuple[float, float]:
    """One stage over the whole topic with a group of its own: (µs of CPU a packet, packets a second)."""
    from kapow.config import parse_config
    from kapow.kafka.clients import make_consumer
    from kapow.pipeline.sort import Sorter

    consumer = make_consumer(BOOTSTRAP, f"floor-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    sorter = Sorter(parse_config(config_text)) if name == "sort" else None
    got, seq = 0, 0
    first: tuple[float, float, int] | None = None
    deadline = time.monotonic() + 120
    try:
        while got < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"floor: {name}: {got} of {n} packets after 120 s")
            msgs = consumer.consume(BATCH, 1.0)
            if not msgs:
                continue
            if first is None:  # the clock starts at the first batch: assignment and the first fetch are not counted
                first = (_cpu(), time.monotonic(), len(msgs))
            got += len(msgs)
            if sorter is not None:
                seq += 1
                batch, works = sorter.sort(seq, msgs)
                if batch.packets != len(msgs) or sum(len(w.rows) for w in works) != len(msgs):
                    raise SystemExit(f"floor: sort filed {batch.packets} of {len(msgs)} packets: not the workload")
                del batch, works
            del msgs
        end_cpu, end_wall = _cpu(), time.monotonic()
    finally:
        consumer.close()
    assert first is not None
    counted = got - first[2]
    if counted <= 0:
        raise SystemExit(f"floor: {name}: the topic came in one batch; give more packets (-n) to measure")
    return 1e6 * (end_cpu - first[0]) / counted, counted / max(end_wall - first[1], 1e-9)


def main(argv: Sequence[str] | None = None) -> int:
    from kapow.pipeline.process import tune_gc

    p = argparse.ArgumentParser(prog="python -m kapow_bench.floor", description=__doc__.splitlines()[0])
    p.add_argument("-n", "--packets", type=int, default=300_000)
    p.add_argument("--size", type=int, choices=(250, 12), default=250)
    p.add_argument("--rounds", type=int, default=3, help="each stage this many times, alternating")
    p.add_argument("-p", "--partitions", type=int, default=6)
    args = p.parse_args(argv)
    spec = Spec(size=args.size).check()
    tune_gc()
    with Scratch(spec, partitions=args.partitions) as scratch:
        work = prepare(scratch, spec, args.packets)
        publish(scratch.topic, work)
        config = scratch.config(batch=BATCH, connections=2)
        results: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES}
        for r in range(args.rounds):
            for name in STAGES if r % 2 == 0 else reversed(STAGES):
                us, rate = stage(name, scratch.topic, work.n, config)
                results[name].append((us, rate))
                print(f"{name:8s} round {r + 1}: {us:5.2f} µs of CPU a packet, {rate:9,.0f} packets/s", flush=True)
    for name, got in results.items():
        print(f"{name:8s} median: {statistics.median(u for u, _ in got):5.2f} µs of CPU a packet, "
              f"{statistics.median(r for _, r in got):9,.0f} packets/s ({args.size} B, {args.packets:,} packets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
