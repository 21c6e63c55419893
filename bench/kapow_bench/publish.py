"""Publish a workload's records as fast as the client goes (KaPoW's Publisher: idempotent, lz4, linger 20 ms)."""

from __future__ import annotations

from typing import Any

from kapow.errors import KapowError
from kapow_bench.env import BOOTSTRAP
from kapow_bench.workload import Workload


def publish(topic: str, work: Workload, progress: Any = None) -> None:
    """Envelope packets carry the ``context`` header; routed records (plain rows, change events) carry none."""
    from kapow.client import DeliveryError, Publisher

    with Publisher(BOOTSTRAP, topic, settings={"log_level": 3}) as pub:  # no info lines from its teardown
        produce = pub.send_raw
        pipeline = work.headers
        for i, (value, key) in enumerate(zip(work.values, work.keys, strict=True)):
            produce(value, key, pipeline=pipeline)
            if progress is not None and i % 20_000 == 0:
                progress(i)
        try:
            pub.flush()
        except DeliveryError as exc:
            raise KapowError(f"publishing: {exc}") from None
