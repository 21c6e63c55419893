"""The writer's loop on an in-memory Kafka: commit order, revoke, lost partitions, error acks, memory, shutdown."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from confluent_kafka import Message

from kapow.config import parse_config
from kapow.contract import CONTEXT_VALUE
from kapow.pipeline.runner import Writer
from tests.unit.fake_kafka import FakeClients, FakeConsumer, FakePersister, FakeProducer

CONFIG = """
[kafka]
bootstrap_servers = "x:1"
topics = ["in"]
[[destinations]]
vanity = "wh"
databases = ["db"]
[pipeline]
shutdown_deadline_s = 0.5
redrive = false
{extra}
[http]
enabled = false
"""


def packet(table: str, i: int) -> bytes:
    dest = {"vanity": "wh", "database": "db", "table": table}
    return msgspec.json.encode({"pipeline_context": {"destinations": [dest]}, "data": {"id": i}})


def records(spec: dict[int, list[bytes]]) -> dict[tuple[str, int], list[Message]]:
    return {("in", p): [Message(topic="in", partition=p, offset=o, key=None, value=v,
                                headers=[("context", CONTEXT_VALUE)], timestamp=(1, 1)) for o, v in enumerate(vs)]
            for p, vs in spec.items()}


def writer(spec: dict[int, list[bytes]], extra: str = "") -> tuple[Writer, FakeConsumer, FakeProducer, FakePersister]:
    if "batch_max_messages" not in extra:
        extra += "\nbatch_max_messages = 10"
    consumer, producer, persister = FakeConsumer(records(spec)), FakeProducer(), FakePersister()
    w = Writer(parse_config(CONFIG.format(extra=extra)), clients=FakeClients(consumer, producer),
               persister=persister)  # type: ignore[arg-type]
    w.open()
    return w, consumer, producer, persister


def steps(w: Writer, n: int = 5) -> None:
    for _ in range(n):
        w.step()


def test_offsets_never_pass_a_batch_still_waiting_even_when_later_ones_are_done() -> None:
    # partition 0: ten packets for a held table; partition 1: twenty for a healthy one (two later batches)
    w, consumer, _producer, persister = writer({0: [packet("slow", i) for i in range(10)],
                                                1: [packet("fast", i) for i in range(20)]})
    persister.held.add("slow")
    steps(w)
    assert len(w.window) >= 1
    assert consumer.committed_offsets == {}, "committed past a batch whose rows had not landed"
    persister.release("slow")
    steps(w)
    assert consumer.committed_offsets == {("in", 0): 10, ("in", 1): 20}
    assert w.totals["landed"] == 30


def test_revoke_commits_what_finished_and_drops_the_rest_for_the_next_owner() -> None:
    w, consumer, _producer, persister = writer({0: [packet("a", i) for i in range(5)] + [packet("held", 5)]},
                                               extra="batch_max_wait_ms = 1")
    persister.held.add("held")
    steps(w, 2)
    consumer.schedule("revoke")
    started = time.monotonic()
    w.step()
    assert time.monotonic() - started < 2, "revoke waited longer than its deadline"
    assert consumer.committed_offsets.get(("in", 0), 0) == 0  # the held packet sits in the same batch
    assert persister.cancels and persister.cancels[-1] is True, "statements under way were not cancelled"
    assert len(w.window) <= 1  # what was dropped is consumed again from the committed offset
    persister.release("held")
    steps(w)
    assert consumer.committed_offsets[("in", 0)] == 6
    assert w.totals["landed"] == 6


def test_lost_partitions_are_never_committed() -> None:
    w, consumer, _producer, persister = writer({0: [packet("held", i) for i in range(3)]})
    persister.held.add("held")
    steps(w, 2)
    consumer.schedule("lost")
    w.step()
    assert consumer.commits == []
    assert persister.cancels == [True]


def test_a_batch_waits_for_its_error_records_to_be_acknowledged() -> None:
    bad = b'{"not": "a packet"}'
    w, consumer, producer, _persister = writer({0: [packet("a", 0), bad, packet("a", 2)]})
    producer.failing.add("kapow.errors.user")
    steps(w, 3)
    assert consumer.committed_offsets == {}, "committed past an error record Kafka had not acknowledged"
    producer.failing.clear()
    deadline = time.monotonic() + 5
    while not consumer.committed_offsets and time.monotonic() < deadline:
        w.step()
    assert consumer.committed_offsets == {("in", 0): 3}
    assert [t for t, _v, _h in producer.delivered] == ["kapow.errors.user"]
    assert w.totals["user_error"] == 1 and w.totals["landed"] == 2


def test_past_the_memory_bound_the_consumer_pauses_then_sheds_and_resumes() -> None:
    big = packet("held", 0)[:-2] + b', "pad": "' + b"x" * 700_000 + b'"}}'
    w, consumer, _producer, persister = writer({0: [big, big, packet("held", 3)]},
                                               extra="max_buffer_bytes = 1048576\nbatch_max_messages = 1")
    persister.held.add("held")
    persister.stuck.add("held")  # held by a failure: the read-ahead leaves it out, the memory bound does not
    steps(w, 3)
    assert consumer.paused == {("in", 0)}, "not paused past max_buffer_bytes"
    w._pressure_since -= 2  # the pressure has lasted: what is held is parked
    w.step()
    assert persister.sheds >= 1
    persister.release("held")
    steps(w, 3)
    assert consumer.paused == set()
    assert consumer.committed_offsets == {("in", 0): 3}


def test_a_pause_that_lasts_below_the_bound_but_above_the_resume_line_still_sheds() -> None:
    """Held packets between 80 % and 100 % of max_buffer_bytes kept the consumer paused and parked nothing: one
    locked table of large packets stopped every other table for as long as the lock (a hostile run: 28 s)."""
    big = packet("held", 0)[:-2] + b', "pad": "' + b"x" * 440_000 + b'"}}'
    w, consumer, _producer, persister = writer({0: [big, big, big, packet("ok", 3)]},
                                               extra="max_buffer_bytes = 1048576\nbatch_max_messages = 1")
    persister.held.add("held")
    persister.stuck.add("held")
    steps(w, 4)
    assert consumer.paused == {("in", 0)} and w.held_bytes > w.config.pipeline.max_buffer_bytes
    w.held_bytes = int(0.9 * 1048576)  # as if part had landed: what is left is 90 % of the bound
    before = persister.sheds
    w._pressure_since -= 2
    w.step()
    assert consumer.paused == {("in", 0)} and persister.sheds == before + 1, "paused and nothing parked"


def test_shutdown_with_a_destination_stuck_returns_within_the_deadline() -> None:
    w, consumer, _producer, persister = writer({0: [packet("held", i) for i in range(3)]})
    persister.held.add("held")
    steps(w, 2)
    started = time.monotonic()
    drained = w.close()
    took = time.monotonic() - started
    assert drained is False
    assert took < 0.5 + 4, f"close took {took:.1f} s with a 0.5 s deadline"
    assert consumer.closed and persister.closed and persister.cancels == [True]
    assert consumer.commits == []
    assert not w.ready


def test_health_reports_commits_stuck_past_every_bound() -> None:
    w, _consumer, _producer, persister = writer({0: [packet("held", 0)]}, extra="hold_s = 1")
    persister.held.add("held")
    steps(w, 2)
    assert w.health()[0]
    head: Any = w.window.head()
    head.started -= 1000
    ok, why = w.health()
    assert not ok and "no commit" in why


def test_an_undecodable_batch_is_reported_within_the_memory_bound_while_the_error_topic_is_slow() -> None:
    """Each undecodable offset is an error record held until acknowledged: a batch of ten million of them, with an
    error topic that acknowledged nothing, took held bytes to 307 MB over a 1 MB bound in 200 steps (a review)."""
    from kapow.errors import ErrorCode, Failure, Scope
    from kapow.kafka.unreadable import _Search

    w, _consumer, producer, _persister = writer({0: [packet("a", 0)]},
                                                extra="max_buffer_bytes = 1048576\nbatch_max_messages = 1000")
    w.step()
    w.step()
    producer.poll = lambda _t=0.0: 0  # type: ignore[method-assign]  # nothing acknowledged
    found = _Search(base=1, first=1, inside=10_000_000, outside=10_000_001, reason="bad")
    found.end = 10_000_000
    found.failure = Failure(ErrorCode.UNDECODABLE, "x", Scope.ROW)
    w.unreadable._searches[("in", 0)] = found
    for _ in range(200):
        w.step()
    assert w.held_bytes <= w.config.pipeline.max_buffer_bytes
    assert 0 < len(producer.queue) < 1000
    assert w.unreadable.searching  # the rest waits for room
