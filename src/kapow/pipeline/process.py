"""Process-level helpers of the writer: the garbage collector's tuning and calls bounded in time."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

log = logging.getLogger("kapow.writer")


def tune_gc() -> None:
    """Collect young objects every 50,000 allocations instead of 700, and freeze what startup made.

    Every packet allocates a few containers (its row, key tuple), so the default threshold ran a generation-0
    collection every few packets' worth of work; the hot path makes no reference cycles, so those collections
    found nothing and cost about a quarter of the writer's CPU (measured: 2.4 s -> 1.8 s of CPU for 300,000
    packets). Memory stays bounded: batches are released as soon as they are committed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def bounded(call: Any, timeout: float, what: str) -> None:
    """Run ``call`` on a daemon thread and wait at most ``timeout``: a stuck broker cannot hold the exit."""
    thread = threading.Thread(target=_quiet, args=(call, what), name=f"kapow-{what.replace(' ', '-')}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        log.warning("%s did not finish within %.0f s; leaving it", what, timeout)


def _quiet(call: Any, what: str) -> None:
    try:
        call()
    except Exception as exc:
        log.warning("%s: %s", what, exc)
