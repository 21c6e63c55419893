"""A restarted redrive never republishes a record an operator already purged or rescheduled.

The redrive skips a parked record that carries a ``.done`` marker (:mod:`kapow.deadletter.redrive`). While a record
waits for its destination, its partition is paused and the redrive group's offset stays before it, so after a
writer restart the record is read again: the new session must know the markers before it judges it. Found while
writing the mutation tests (issue 17): a fresh session judged the first records it read with no marker loaded yet,
and a purged packet was redriven into its table. This test fails until the session reads the markers to their end
before it judges anything (see the report to the lead).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from kapow.contract import TableKey
from kapow.deadletter.done import ensure_done_topic
from kapow.deadletter.queue import DeadLetterQueue
from kapow.deadletter.redrive import Redriver
from tests.integration import kit
from tests.integration.kit import Queue
from tests.integration.test_core_kafka import ns, park, redrive_config, values

pytestmark = pytest.mark.integration


@pytest.fixture
def q() -> Iterator[Queue]:
    with kit.queue_topics("kr", 2) as queue:
        yield queue


def test_a_restarted_redrive_leaves_what_an_operator_purged_or_rescheduled(q: Queue) -> None:
    park(q, [{"vanity": "vault"} for _ in range(6)])
    ensure_done_topic(kit.BOOTSTRAP, q.system)
    config = redrive_config(q)
    asked = threading.Event()

    def down(_key: TableKey) -> bool:
        asked.set()
        return False

    waiting = Redriver(config, down)  # the vault is down: every record waits, nothing is committed past it
    waiting.start()
    try:
        assert asked.wait(60), "the redrive never looked at the queue"
        dlq = DeadLetterQueue(kit.BOOTSTRAP, q.system, timeout=20)
        records = dlq.records()
        assert dlq.purge([records[0], records[3]]) == 2  # the operator acts while the records wait
        assert dlq.reschedule([records[1]]) == 1
    finally:
        waiting.stop(10)
    assert values(kit.read_all(q.source)) == [b'{"n": 1}']  # the operator's copy

    restarted = Redriver(config, lambda _key: True)  # the writer restarts; the vault is back
    restarted.start()
    try:
        kit.wait_for(lambda: sum(max(0, o) for o in kit.committed_offsets(f"{config.kafka.group_id}.redrive",
                                                                          q.system).values()) == 6,
                     60, "the restarted redrive to pass every record")
    finally:
        restarted.stop(10)
    copies = values(kit.read_all(q.source))
    assert copies == [b'{"n": 1}', b'{"n": 2}', b'{"n": 4}', b'{"n": 5}'], (
        f"purged records 0 and 3 must never land, record 1 must be copied once: {copies}")
    assert ns(DeadLetterQueue(kit.BOOTSTRAP, q.system, timeout=20).records()) == []
