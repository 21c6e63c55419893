"""ByteCache: bounded in bytes whatever is put, and a working set that fits is always served."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kapow.bytecache import ByteCache, CostCache, entry_cost


@given(st.lists(st.binary(max_size=300), max_size=400), st.integers(min_value=1, max_value=60_000))
def test_never_holds_more_than_its_bound_and_keeps_the_latest(keys: list[bytes], max_bytes: int) -> None:
    cache: ByteCache[int] = ByteCache(max_bytes=max_bytes, max_key_bytes=200)
    for i, key in enumerate(keys):
        cache.put(key, i)
        assert cache.bytes <= max_bytes
        assert cache.bytes == sum(entry_cost(k) for k in cache._entries)
        fits = len(key) <= 200 and entry_cost(key) <= max_bytes
        assert cache.get(key) == (i if fits else None)


def test_a_working_set_that_fits_is_served_in_full() -> None:
    cache: ByteCache[int] = ByteCache(max_bytes=1000 * entry_cost(b"x" * 20))
    keys = [b"%020d" % i for i in range(1000)]
    for round_ in range(3):
        for i, key in enumerate(keys):
            if round_:
                assert cache.get(key) == i
            cache.put(key, i)
    assert len(cache) == 1000


def test_when_full_the_oldest_entries_make_room() -> None:
    cache: ByteCache[str] = ByteCache(max_bytes=3 * entry_cost(b"a"))
    for key in (b"a", b"b", b"c", b"d"):
        cache.put(key, key.decode())
    assert [cache.get(k) for k in (b"a", b"b", b"c", b"d")] == [None, "b", "c", "d"]
    cache.put(b"b", "B")  # a put of a held key replaces it and counts it once
    assert len(cache) == 3 and cache.bytes == 3 * entry_cost(b"a") and cache.get(b"b") == "B"


def test_a_key_over_the_limit_is_never_held() -> None:
    cache: ByteCache[int] = ByteCache(max_bytes=10_000_000, max_key_bytes=2048)
    cache.put(b"x" * 2049, 1)
    cache.put(b"y" * 2048, 2)
    assert cache.get(b"x" * 2049) is None and cache.get(b"y" * 2048) == 2 and len(cache) == 1


@given(st.lists(st.tuples(st.text(max_size=30), st.integers(0, 50)), max_size=300),
       st.integers(min_value=1, max_value=2_000))
def test_a_cost_cache_keeps_its_bound_by_its_own_cost(keys: list[tuple[str, int]], max_bytes: int) -> None:
    """The router's cache: any hashable key, counted by the function it is given, oldest out first."""

    def cost(key: tuple[str, int]) -> int:
        return 10 * len(key[0]) + key[1] + 1

    cache: CostCache[tuple[str, int], int] = CostCache(cost, max_bytes=max_bytes)
    order: list[tuple[str, int]] = []
    for i, key in enumerate(keys):
        cache.put(key, i)
        if key in order:
            order.remove(key)
        if cost(key) <= max_bytes:
            order.append(key)
        assert cache.bytes == sum(map(cost, cache)) <= max_bytes
        assert list(cache) == order[len(order) - len(cache):], "not the newest entries, in order"
        assert (key in cache) == (cost(key) <= max_bytes)
