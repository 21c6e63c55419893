"""A small cache keyed by bytes, bounded in bytes, that keeps working when full.

The consumer loop caches what repeats from packet to packet by its raw bytes: a ``pipeline_context`` and the
destinations it resolves to. Each table a client writes to has its own context, so a company-wide pipeline has
thousands of them. The first caches were capped at 2,048 entries and filled once. At 10,000 tables, four in five
packets missed and decoded and resolved their context again. This cache is bounded by the bytes it holds
instead, which is what a hostile stream of ever-new contexts could grow. When a new entry does not fit, the
oldest entries are evicted (first in, first out: O(1), and a hit costs one dict lookup, no reordering). So a
working set that fits is always served, and one that does not fit still fills the cache with its most recent part.

What an entry costs is estimated, not its keys' bytes alone: a decoded context (its destinations, their routes)
takes about seven times its JSON bytes in Python objects (measured with tracemalloc, 1 to 14 destinations per
context), so each entry counts ``KEY_FACTOR`` times its key plus ``ENTRY_OVERHEAD``, and ``max_bytes`` bounds the
memory really held, a hostile stream of ever-new 2 KB contexts included.

The router caches each destination's verdict the same way (:class:`CostCache` with its own cost function): one
bounded FIFO for both, not two copies of the eviction.

Not thread-safe by design: each instance is owned by one object used by one thread (the loop's decoder, sorter
and router).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ENTRY_OVERHEAD = 512  # bytes counted per entry: the dict slot, the key object, the value's fixed part
KEY_FACTOR = 8  # bytes counted per byte of key: the key itself and the value decoded from it (~7x, measured)


def entry_cost(key: bytes) -> int:
    return len(key) * KEY_FACTOR + ENTRY_OVERHEAD


class CostCache(Generic[K, V]):
    """K → V, holding entries of at most ``max_bytes`` in all, each counted by ``cost(key)``; when a new entry does
    not fit, the oldest go first. An entry that costs more than ``max_bytes`` alone is never cached."""

    def __init__(self, cost: Callable[[K], int], *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cost = cost
        # an OrderedDict: the oldest goes in O(1); next(iter()) on a dict whose front was deleted walks every dead
        # slot up to the next resize, and a stream of ever-new contexts spent most of the loop there (a hostile run)
        self._entries: OrderedDict[K, V] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """The keys, oldest first."""
        return iter(self._entries)

    def full(self, size: int) -> bool:
        """Whether an entry counted ``size`` bytes would evict another now."""
        return self.bytes + size > self.max_bytes

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        cost = self._cost
        size = cost(key)
        if size > self.max_bytes:
            return
        entries = self._entries
        if key in entries:
            del entries[key]
            self.bytes -= size
        while entries and self.bytes + size > self.max_bytes:
            oldest, _value = entries.popitem(last=False)
            self.bytes -= cost(oldest)
        entries[key] = value
        self.bytes += size


class ByteCache(CostCache[bytes, V]):
    """``bytes`` → V, counted by :func:`entry_cost`; keys over ``max_key_bytes`` are never cached (they are
    resolved every time, which costs CPU, never memory)."""

    def __init__(self, *, max_bytes: int = 16 * 1024 * 1024, max_key_bytes: int = 2048) -> None:
        super().__init__(entry_cost, max_bytes=max_bytes)
        self.max_key_bytes = max_key_bytes

    def put(self, key: bytes, value: V) -> None:
        if len(key) <= self.max_key_bytes:
            super().put(key, value)
