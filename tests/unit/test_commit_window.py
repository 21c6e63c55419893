"""Offsets move only forward and only over batches that are done, in consumption order."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kapow.pipeline.commit import CommitWindow


@dataclass
class FakeBatch:
    seq: int
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    done: bool = False


def test_release_stops_at_first_unfinished() -> None:
    w: CommitWindow[FakeBatch] = CommitWindow()
    b1, b2, b3 = FakeBatch(1, {("t", 0): 9}), FakeBatch(2, {("t", 0): 19, ("t", 1): 4}), FakeBatch(3, {("t", 1): 8})
    for b in (b1, b2, b3):
        w.add(b)
    b2.done = b3.done = True
    assert w.release() == ([], {})
    b1.done = True
    released, offsets = w.release()
    assert [b.seq for b in released] == [1, 2, 3]
    assert offsets == {("t", 0): 20, ("t", 1): 9}
    assert len(w) == 0


def test_out_of_order_add_is_refused() -> None:
    w: CommitWindow[FakeBatch] = CommitWindow()
    w.add(FakeBatch(2))
    with pytest.raises(ValueError, match="added after"):
        w.add(FakeBatch(1))


def test_forget_drops_partitions() -> None:
    w: CommitWindow[FakeBatch] = CommitWindow()
    w.add(FakeBatch(1, {("t", 0): 5, ("t", 1): 6}, done=True))
    w.add(FakeBatch(2, {("t", 1): 8}, done=True))  # holds no offset of partition 0
    w.forget({("t", 0)})
    assert w.release()[1] == {("t", 1): 9}


def test_head_iteration_and_clear() -> None:
    w: CommitWindow[FakeBatch] = CommitWindow()
    assert w.head() is None and list(w) == [] and w.clear() == []
    b1, b2 = FakeBatch(1, {("t", 0): 1}), FakeBatch(2, {("t", 0): 2}, done=True)
    w.add(b1)
    w.add(b2)
    assert w.head() is b1 and list(w) == [b1, b2] and len(w) == 2
    assert w.clear() == [b1, b2]
    assert len(w) == 0 and w.head() is None and w.release() == ([], {})
    with pytest.raises(ValueError, match="added after"):
        w.add(FakeBatch(2))  # sequence numbers keep rising across a clear
    w.add(FakeBatch(3))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 20), st.booleans()), min_size=1, max_size=40))
def test_committed_offsets_never_pass_an_unfinished_batch(spec: list[tuple[int, int, bool]]) -> None:
    """Whatever finishes when, a committed offset never exceeds the first offset of an unfinished batch."""
    w: CommitWindow[FakeBatch] = CommitWindow()
    next_offset = {p: 0 for p in range(4)}
    batches = []
    for seq, (partition, count, done) in enumerate(spec, 1):
        first = next_offset[partition]
        next_offset[partition] += count
        b = FakeBatch(seq, {("t", partition): first + count - 1}, done=done)
        b.first = first  # type: ignore[attr-defined]
        batches.append(b)
        w.add(b)
    released, committed = w.release()
    unfinished = [b for b in batches if not b.done]
    for (_, partition), offset in committed.items():
        blockers = [b.first for b in unfinished if ("t", partition) in b.offsets]  # type: ignore[attr-defined]
        if blockers:
            assert offset <= min(blockers)
    # everything before the first unfinished batch is released, nothing after it
    first_unfinished = unfinished[0].seq if unfinished else len(batches) + 1
    assert [b.seq for b in released] == list(range(1, first_unfinished))
    assert len(w) == len(batches) - (first_unfinished - 1)
    # and the commit is exactly one past the newest offset released per partition: not less (a replay), not more
    expected: dict[tuple[str, int], int] = {}
    for b in released:
        for tp, last in b.offsets.items():
            expected[tp] = max(expected.get(tp, 0), last + 1)
    assert committed == expected
