"""What a connection's statement counts hold is bounded in bytes (kapow.postgres.plans), whatever texts come."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from psycopg.pq import TransactionStatus

from kapow.postgres import plans


def busy_connection() -> Any:
    """A connection inside a transaction: texts are counted, no function is made."""
    return SimpleNamespace(info=SimpleNamespace(transaction_status=TransactionStatus.INTRANS))


def test_texts_counted_hold_at_most_counted_bytes_and_long_ones_are_never_counted() -> None:
    known = plans.Plans()
    conn = busy_connection()
    for i in range(3_000):  # a wide table's column subsets: ever-new texts of ~10 kB
        text = f"INSERT INTO t ({', '.join(f'c{i}_{j}' for j in range(1_000))}) SELECT 1"
        assert known.texts(conn, [text]) == [text]
        assert known._uses_bytes == sum(map(len, known._uses)) <= plans.COUNTED_BYTES
    long = "INSERT INTO t " + "x" * plans.MAX_TEXT
    for _ in range(plans.PLAN_AFTER * 2):
        known.texts(conn, [long])
    assert long not in known._uses and known.made == 0
