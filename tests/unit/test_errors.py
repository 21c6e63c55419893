"""SQLSTATE classification: the database's own word decides whose fault an error is."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pgerr

from kapow.errors import ErrorClass, ErrorCode, classify_exception, classify_sqlstate, one_line


@pytest.mark.parametrize(
    ("sqlstate", "code"),
    [
        ("22P02", ErrorCode.BAD_VALUE),  # invalid_text_representation
        ("22003", ErrorCode.BAD_VALUE),  # numeric_value_out_of_range
        ("23514", ErrorCode.CONSTRAINT_VIOLATION),  # check_violation
        ("23503", ErrorCode.CONSTRAINT_VIOLATION),  # foreign_key_violation
        ("23502", ErrorCode.MISSING_COLUMN),  # not_null_violation
        ("42P01", ErrorCode.UNKNOWN_TABLE),
        ("42703", ErrorCode.UNKNOWN_COLUMN),
        ("08006", ErrorCode.DATABASE_UNAVAILABLE),  # connection_failure
        ("08001", ErrorCode.DATABASE_UNAVAILABLE),
        ("53300", ErrorCode.TOO_MANY_CONNECTIONS),
        ("53100", ErrorCode.DATABASE_UNAVAILABLE),  # disk_full
        ("57014", ErrorCode.TIMEOUT),  # query_canceled
        ("57P01", ErrorCode.DATABASE_SHUTTING_DOWN),
        ("57P03", ErrorCode.DATABASE_UNAVAILABLE),
        ("40P01", ErrorCode.TIMEOUT),  # deadlock: retry
        ("58030", ErrorCode.DATABASE_UNAVAILABLE),  # io_error
        ("XX000", ErrorCode.INTERNAL),
        (None, ErrorCode.DATABASE_UNAVAILABLE),
        ("ZZ999", ErrorCode.INTERNAL),
    ],
)
def test_classify_sqlstate(sqlstate: str | None, code: ErrorCode) -> None:
    assert classify_sqlstate(sqlstate) is code


def test_classes_and_retry() -> None:
    assert ErrorCode.BAD_VALUE.error_class is ErrorClass.USER and not ErrorCode.BAD_VALUE.retryable
    assert ErrorCode.TIMEOUT.error_class is ErrorClass.SYSTEM and ErrorCode.TIMEOUT.retryable
    assert ErrorCode.INTERNAL.error_class is ErrorClass.SYSTEM and not ErrorCode.INTERNAL.retryable
    user = {c for c in ErrorCode if c.error_class is ErrorClass.USER}
    assert {"not_json", "bad_packet", "too_large", "unsupported_destination_type", "unknown_destination",
            "unknown_table", "unknown_column", "missing_column", "bad_value", "constraint_violation",
            "no_unique_key"} <= {c.value for c in user}


def test_classify_exception_uses_sqlstate_not_class() -> None:
    # psycopg maps SQLSTATE to exception classes; we read the state itself
    exc = pgerr.lookup("23514")("new row violates check constraint")
    assert classify_exception(exc).code is ErrorCode.CONSTRAINT_VIOLATION
    assert classify_exception(psycopg.OperationalError("connection refused")).code is ErrorCode.DATABASE_UNAVAILABLE
    assert classify_exception(TimeoutError("no free connection")).code is ErrorCode.TIMEOUT
    assert classify_exception(ConnectionResetError("reset")).code is ErrorCode.DATABASE_UNAVAILABLE
    assert classify_exception(ValueError("bug")).code is ErrorCode.INTERNAL


def test_one_line() -> None:
    assert one_line("first\nsecond") == "first"
    assert len(one_line("x" * 1000)) == 500
