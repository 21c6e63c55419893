"""The transaction of a unit that COPYs is KaPoW's own (``BEGIN`` goes with the savepoint, a round trip fewer):
whatever stops the call once ``BEGIN`` has run, the connection goes back to its pool idle, never in a
transaction. A recording connection stands in for PostgreSQL: the paths are the ones a real cancel or a broken
connection take (tests/integration/test_copy.py runs the timeouts against the real server)."""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg
import pytest
from psycopg.pq import TransactionStatus

from kapow.contract import Destination, PacketDecoder
from kapow.postgres.catalog import Column, Table
from kapow.postgres.statements import RowIn, plan
from kapow.postgres.writer import COPY_MIN_ROWS, apply_unit

BEGIN = "BEGIN; SET CONSTRAINTS ALL IMMEDIATE; SAVEPOINT kapow_copy"


class Info:
    encoding = "utf-8"
    transaction_status = TransactionStatus.IDLE


class Recording:
    """Records what is executed; fails the statement ``fail_on`` with ``error``, leaving the transaction in
    ``status_after`` (what the server's state would be)."""

    def __init__(self, fail_on: str, error: BaseException, status_after: TransactionStatus,
                 *, closed_after: bool = False) -> None:
        self.info = Info()
        self.closed = False
        self.sent: list[str] = []
        self.fail_on, self.error, self.status_after, self.closed_after = fail_on, error, status_after, closed_after

    def execute(self, query: str, *_args: Any) -> None:
        self.sent.append(query)
        if query == self.fail_on:
            self.info.transaction_status = self.status_after
            self.closed = self.closed_after
            raise self.error
        if query == "ROLLBACK":
            self.info.transaction_status = TransactionStatus.IDLE


def statements() -> tuple[list[Any], Table]:
    cols = {name: Column(name, "bigint", name == "id", False, False, copy_safe=True) for name in ("id", "a")}
    table = Table("public", "t", cols, ("id",), (("id",),), False, True, True, True)
    decoder = PacketDecoder(max_bytes=1 << 20, max_depth=8, max_destinations=4)
    rows = []
    for i in range(COPY_MIN_ROWS):
        doc = msgspec.json.encode({"id": i + 1, "a": i + 2})
        rows.append(RowIn(doc, decoder.keys(doc), Destination("wh", "db", "t"), decoder.values))
    return [plan(table, rows, {})], table


@pytest.mark.parametrize(("error", "status", "closed", "rolled_back"), [
    (psycopg.errors.QueryCanceled("canceling statement due to user request"), TransactionStatus.INERROR, False,
     True),  # a cancel (the lane stopping) that reached the server after BEGIN
    (psycopg.OperationalError("server closed the connection unexpectedly"), TransactionStatus.UNKNOWN, True,
     False),  # the connection broke: nothing to roll back, the server does it
    (RuntimeError("a bug"), TransactionStatus.INTRANS, False, True),
])
def test_a_unit_stopped_at_its_begin_is_rolled_back(error: BaseException, status: TransactionStatus, closed: bool,
                                                     rolled_back: bool) -> None:
    stmts, table = statements()
    conn = Recording(BEGIN, error, status, closed_after=closed)
    with pytest.raises(type(error)):
        apply_unit(conn, stmts, [True], [table])  # type: ignore[arg-type]
    assert conn.sent == [BEGIN, "ROLLBACK"] if rolled_back else conn.sent == [BEGIN]
    assert conn.closed or conn.info.transaction_status == TransactionStatus.IDLE
