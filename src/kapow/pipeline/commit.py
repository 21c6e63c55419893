"""Step 4, commit: move the consumer group's offsets only over packets that are fully handled.

Batches may finish out of order (a slow table in batch 3, a fast one in batch 4), but offsets must only pass
packets that have landed or sit, acknowledged, on an error topic. :class:`CommitWindow` keeps in-flight
batches in consumption order and releases them from the front only: the committable offset of a partition
is one past the highest offset of the newest *contiguously* done batch. A crash anywhere loses nothing: the
uncommitted tail is consumed again and its rows are no-ops (``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Trackable(Protocol):
    seq: int

    @property
    def offsets(self) -> dict[tuple[str, int], int]: ...

    @property
    def done(self) -> bool: ...


B = TypeVar("B", bound=Trackable)


class CommitWindow(Generic[B]):
    """In-flight batches in order; :meth:`release` pops the done prefix and says what to commit."""

    def __init__(self) -> None:
        self._batches: deque[B] = deque()
        self._last_seq = -1

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[B]:
        return iter(self._batches)

    def add(self, batch: B) -> None:
        if batch.seq <= self._last_seq:
            raise ValueError(f"batch {batch.seq} added after batch {self._last_seq}")
        self._last_seq = batch.seq
        self._batches.append(batch)

    def head(self) -> B | None:
        return self._batches[0] if self._batches else None

    def release(self) -> tuple[list[B], dict[tuple[str, int], int]]:
        """Pop every done batch at the front; return them and the offsets to commit (next offset to read)."""
        released: list[B] = []
        commit: dict[tuple[str, int], int] = {}
        while self._batches and self._batches[0].done:
            batch = self._batches.popleft()
            released.append(batch)
            for tp, offset in batch.offsets.items():
                if offset + 1 > commit.get(tp, -1):
                    commit[tp] = offset + 1
        return released, commit

    def clear(self) -> list[B]:
        """Drop every batch (after a revoke: what was not committed is consumed again by the next owner)."""
        dropped = list(self._batches)
        self._batches.clear()
        return dropped

    def forget(self, partitions: set[tuple[str, int]]) -> None:
        """Drop offsets of partitions no longer ours (after a lost assignment); their batches still finish."""
        for batch in self._batches:
            for tp in partitions:
                batch.offsets.pop(tp, None)
