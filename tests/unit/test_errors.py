"""SQLSTATE classification: the database's own word decides whose fault an error is."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pgerr

from kapow.errors import ErrorClass, ErrorCode, Scope, classify_exception, classify_sqlstate, one_line


@pytest.mark.parametrize(
    ("sqlstate", "code", "scope"),
    [
        ("22P02", ErrorCode.BAD_VALUE, Scope.ROW),  # invalid_text_representation
        ("22003", ErrorCode.BAD_VALUE, Scope.ROW),  # numeric_value_out_of_range
        ("22P05", ErrorCode.BAD_VALUE, Scope.ROW),  # untranslatable_character (\u0000)
        ("23514", ErrorCode.CONSTRAINT_VIOLATION, Scope.ROW),  # check_violation
        ("23503", ErrorCode.CONSTRAINT_VIOLATION, Scope.ROW),  # foreign_key_violation (deferred ones too)
        ("23502", ErrorCode.MISSING_COLUMN, Scope.ROW),  # not_null_violation
        ("42P01", ErrorCode.UNKNOWN_TABLE, Scope.ROW),
        ("42703", ErrorCode.UNKNOWN_COLUMN, Scope.ROW),
        ("42501", ErrorCode.FORBIDDEN_DESTINATION, Scope.ROW),
        ("P0001", ErrorCode.ROW_REJECTED, Scope.ROW),  # a trigger's RAISE EXCEPTION
        ("0A000", ErrorCode.UNSUPPORTED_TABLE, Scope.ROW),  # e.g. a DEFERRABLE unique key as arbiter
        ("54000", ErrorCode.BAD_VALUE, Scope.ROW),  # program_limit_exceeded (index row too big)
        ("08006", ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # connection_failure
        ("08001", ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),
        ("53300", ErrorCode.TOO_MANY_CONNECTIONS, Scope.DATABASE),
        ("53100", ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # disk_full
        ("57P01", ErrorCode.DATABASE_SHUTTING_DOWN, Scope.DATABASE),
        ("57P03", ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),
        ("58030", ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # io_error
        ("57014", ErrorCode.TIMEOUT, Scope.TABLE),  # statement timeout: a slow table holds that table only
        ("55P03", ErrorCode.TIMEOUT, Scope.TABLE),  # lock timeout: a locked table holds that table only
        ("40P01", ErrorCode.TIMEOUT, Scope.TABLE),  # deadlock: retry the table
        ("40001", ErrorCode.TIMEOUT, Scope.TABLE),  # serialization failure
        ("XX000", ErrorCode.INTERNAL, Scope.TABLE),
        ("ZZ999", ErrorCode.INTERNAL, Scope.TABLE),  # unknown: held and retried, never a circuit, never dropped
        (None, ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),
    ],
)
def test_classify_sqlstate(sqlstate: str | None, code: ErrorCode, scope: Scope) -> None:
    assert classify_sqlstate(sqlstate) == (code, scope)


SYSTEM = {"database_unavailable", "timeout", "too_many_connections", "database_shutting_down", "internal"}


def test_classes_retry_and_scope_of_every_code() -> None:
    for code in ErrorCode:
        expected = ErrorClass.SYSTEM if code.value in SYSTEM else ErrorClass.USER
        assert code.error_class is expected, code
        assert code.retryable is (expected is ErrorClass.SYSTEM), code
        if expected is ErrorClass.USER:
            assert code.scope is Scope.ROW, code
    assert {ErrorCode.DATABASE_UNAVAILABLE.scope, ErrorCode.TOO_MANY_CONNECTIONS.scope,
            ErrorCode.DATABASE_SHUTTING_DOWN.scope} == {Scope.DATABASE}
    assert ErrorCode.TIMEOUT.scope is Scope.TABLE and ErrorCode.INTERNAL.scope is Scope.TABLE


def test_every_code_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    missing = [c.value for c in ErrorCode if f"`{c.value}`" not in doc]
    assert not missing, f"docs/errors.md does not explain {missing}"


def test_classify_exception_uses_sqlstate_not_class() -> None:
    # psycopg maps SQLSTATE to exception classes; we read the state itself
    exc = pgerr.lookup("23514")("new row violates check constraint")
    assert classify_exception(exc).code is ErrorCode.CONSTRAINT_VIOLATION
    assert classify_exception(psycopg.OperationalError("connection refused")).code is ErrorCode.DATABASE_UNAVAILABLE
    assert classify_exception(TimeoutError("no answer")).code is ErrorCode.TIMEOUT
    assert classify_exception(ConnectionResetError("reset")).code is ErrorCode.DATABASE_UNAVAILABLE
    assert classify_exception(ValueError("bug")).code is ErrorCode.INTERNAL
    assert classify_exception(ValueError("bug")).scope is Scope.TABLE  # our bug never opens a circuit
    from kapow.postgres.pool import PoolBusy, PoolClosed

    assert classify_exception(PoolClosed("closed")).scope is Scope.DATABASE
    assert isinstance(PoolBusy("busy"), psycopg.OperationalError)


def test_one_line() -> None:
    assert one_line("first\nsecond") == "first"
    assert len(one_line("x" * 1000)) == 500
    assert one_line("a\x00b\x1bc") == "a b c"  # no control characters reach a header or a log line
