"""SQLSTATE classification: the database's own word decides whose fault an error is."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import errors as pgerr

from kapow.errors import (
    TABLE_WIDE_USER_CODES,
    ErrorClass,
    ErrorCode,
    Failure,
    PacketError,
    Scope,
    classify_exception,
    classify_fenced,
    classify_sqlstate,
    failure,
    one_line,
)


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
        ("3F000", ErrorCode.UNKNOWN_TABLE, Scope.ROW),  # invalid_schema_name
        ("42804", ErrorCode.BAD_VALUE, Scope.ROW),  # datatype_mismatch
        ("42846", ErrorCode.BAD_VALUE, Scope.ROW),  # cannot_coerce
        ("428C9", ErrorCode.BAD_VALUE, Scope.ROW),  # generated_always
        ("42809", ErrorCode.UNSUPPORTED_TABLE, Scope.ROW),  # wrong_object_type: a view, a sequence
        ("42601", ErrorCode.BAD_VALUE, Scope.ROW),  # any other class 42: the packet's shape
        ("21000", ErrorCode.BAD_VALUE, Scope.ROW),  # cardinality_violation: a key twice in one upsert
        ("55006", ErrorCode.TIMEOUT, Scope.TABLE),  # object_in_use
        ("57P02", ErrorCode.DATABASE_SHUTTING_DOWN, Scope.DATABASE),  # crash_shutdown
        ("57P05", ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # idle_session_timeout
        ("57000", ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # other operator intervention
        ("25006", ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # read_only_sql_transaction: a standby
        ("40000", ErrorCode.TIMEOUT, Scope.TABLE),  # other transaction rollbacks
        ("2F005", ErrorCode.ROW_REJECTED, Scope.ROW),  # routine exception in a trigger function
        ("38000", ErrorCode.ROW_REJECTED, Scope.ROW),
        ("39000", ErrorCode.ROW_REJECTED, Scope.ROW),
        ("44000", ErrorCode.CONSTRAINT_VIOLATION, Scope.ROW),  # WITH CHECK OPTION
        ("", ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # no answer at all
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


def test_table_wide_codes_are_the_table_s_not_a_row_s() -> None:
    assert {ErrorCode.UNKNOWN_TABLE, ErrorCode.UNKNOWN_COLUMN,
                                     ErrorCode.FORBIDDEN_DESTINATION, ErrorCode.UNSUPPORTED_TABLE,
                                     ErrorCode.NO_UNIQUE_KEY} == TABLE_WIDE_USER_CODES
    assert all(c.error_class is ErrorClass.USER for c in TABLE_WIDE_USER_CODES)


def test_failures_carry_their_code_s_class_and_scope() -> None:
    assert failure(ErrorCode.TOO_MANY_CONNECTIONS, "m") == Failure(ErrorCode.TOO_MANY_CONNECTIONS, "m", Scope.DATABASE)
    assert failure(ErrorCode.TIMEOUT, "m").scope is Scope.TABLE
    assert failure(ErrorCode.BAD_VALUE, "m").scope is Scope.ROW
    assert Failure(ErrorCode.INTERNAL, "m").error_class is ErrorClass.SYSTEM
    assert Failure(ErrorCode.BAD_VALUE, "m").error_class is ErrorClass.USER
    err = PacketError(ErrorCode.NOT_JSON, "not json")
    assert str(err) == "not json" and err.failure == Failure(ErrorCode.NOT_JSON, "not json", Scope.ROW)


def test_classify_exception_says_what_happened_in_one_line() -> None:
    check = pgerr.lookup("23514")("new row violates check constraint\nDETAIL: x")
    assert classify_exception(check) == Failure(ErrorCode.CONSTRAINT_VIOLATION, "new row violates check constraint",
                                                Scope.ROW)
    assert classify_exception(pgerr.lookup("57P01")("")) == Failure(ErrorCode.DATABASE_SHUTTING_DOWN,
                                                                    "AdminShutdown", Scope.DATABASE)
    assert classify_exception(TimeoutError("no answer")) == Failure(ErrorCode.TIMEOUT, "no answer", Scope.DATABASE)
    assert classify_exception(TimeoutError()) == Failure(ErrorCode.TIMEOUT, "timed out", Scope.DATABASE)
    assert classify_exception(ConnectionResetError("reset")) == Failure(ErrorCode.DATABASE_UNAVAILABLE, "reset",
                                                                        Scope.DATABASE)
    assert classify_exception(OSError()) == Failure(ErrorCode.DATABASE_UNAVAILABLE, "OSError", Scope.DATABASE)
    assert classify_exception(KeyError("k")) == Failure(ErrorCode.INTERNAL, "KeyError: 'k'", Scope.TABLE)


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
    assert one_line("  \n\n  ") == "" and one_line("") == ""
    assert one_line(ValueError(" padded \n")) == "padded"
    assert one_line("x" * 1000) == "x" * 499 + "…"
    assert one_line("x" * 500) == "x" * 500 and one_line("x" * 501) == "x" * 499 + "…"
    assert one_line("abcdef", limit=4) == "abc…"
    assert one_line("a\x00b\x1bc") == "a b c"  # no control characters reach a header or a log line


@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=5, max_size=5))
def test_a_fenced_state_is_never_the_database_s(sqlstate: str) -> None:
    """What the apply function's fence caught came with an answer from the server: at most the table's."""
    code, scope = classify_fenced(sqlstate)
    plain_code, plain_scope = classify_sqlstate(sqlstate)
    assert code is plain_code
    assert scope is (Scope.TABLE if plain_scope is Scope.DATABASE else plain_scope)
    assert classify_fenced("08006") == (ErrorCode.DATABASE_UNAVAILABLE, Scope.TABLE)
