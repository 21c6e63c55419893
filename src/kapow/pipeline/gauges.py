"""The gauges the writer refreshes once a second, and the read-only view of its lanes the HTTP side uses.

Lag is the high watermark (cached from fetch responses: no broker call) minus the group's committed offset: what
is not yet safely handled, which is what an operator needs to know (a consumer position ahead of the commit has
landed nothing for sure). Pools, circuits and held tables come from the lanes; the buffer from the loop.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

from kapow import metrics
from kapow.pipeline.persist import Persister


def refresh_gauges(persister: Persister, consumer: Any, assigned: set[tuple[str, int]],
                   committed: dict[tuple[str, int], int], held_bytes: int) -> None:
    for (vanity, database), lane in persister.lanes().items():
        metrics.POOL_IN_USE.labels(vanity, database).set(lane.pool.in_use)
        metrics.POOL_MAX.labels(vanity, database).set(lane.config.max_connections)
        metrics.CIRCUIT.labels(vanity, database).set(lane.circuit.state.value)
        metrics.TABLES_HELD.labels(vanity, database).set(lane.held_tables())
    metrics.BUFFER_BYTES.set(held_bytes)
    if consumer is None:
        return
    for tp in list(assigned):
        _low, high = consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
        done = committed.get(tp, -1)
        if high < 0 or done < 0:
            continue
        metrics.LAG.labels(tp[0], str(tp[1])).set(max(0, high - done))


class _CircuitView:
    def __init__(self, state: str) -> None:
        self.state = state


class DestinationsView:
    """Read-only view of the lanes for ``/readyz`` and the console: ``.state`` of circuits, ``.in_use`` of pools."""

    def __init__(self, persister: Persister) -> None:
        self._persister = persister

    def circuits(self) -> dict[tuple[str, str], Any]:
        return {k: _CircuitView(lane.circuit.state.label) for k, lane in self._persister.lanes().items()}

    def pools(self) -> dict[tuple[str, str], Any]:
        return {k: lane.pool for k, lane in self._persister.lanes().items()}


