"""One error taxonomy for the whole pipeline.

Every failure a packet can meet is one :class:`ErrorCode`. The code's class decides its fate:

* ``user`` errors are the client's fault (bad JSON, unknown table, a value the column rejects). They are never
  retried: the packet goes to the user-errors topic with a reason, and the stream keeps flowing.
* ``system`` errors are not the client's fault (database down, timeout, too many connections). They are retried
  with back-off for a bounded time, then parked on the system-errors topic, a dead-letter queue.

Database errors are classified by SQLSTATE class, not by Python exception type: the SQLSTATE is the database's
own, stable statement of whose fault an error is, and it survives driver upgrades.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorClass(enum.StrEnum):
    """Whose fault a failure is, which decides retry and topic."""

    USER = "user"
    SYSTEM = "system"


class ErrorCode(enum.StrEnum):
    """Stable error codes; documented in docs/errors.md. Never rename one: clients match on them."""

    # user errors
    NOT_JSON = "not_json"
    BAD_PACKET = "bad_packet"
    TOO_LARGE = "too_large"
    UNSUPPORTED_DESTINATION_TYPE = "unsupported_destination_type"
    UNKNOWN_DESTINATION = "unknown_destination"
    FORBIDDEN_DESTINATION = "forbidden_destination"
    UNKNOWN_TABLE = "unknown_table"
    UNKNOWN_COLUMN = "unknown_column"
    MISSING_COLUMN = "missing_column"
    BAD_VALUE = "bad_value"
    CONSTRAINT_VIOLATION = "constraint_violation"
    NO_UNIQUE_KEY = "no_unique_key"
    # system errors
    DATABASE_UNAVAILABLE = "database_unavailable"
    TIMEOUT = "timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    DATABASE_SHUTTING_DOWN = "database_shutting_down"
    INTERNAL = "internal"

    @property
    def error_class(self) -> ErrorClass:
        return ErrorClass.SYSTEM if self in _SYSTEM_CODES else ErrorClass.USER

    @property
    def retryable(self) -> bool:
        """System errors may succeed later; ``internal`` is parked at once since a retry would repeat it."""
        return self in _SYSTEM_CODES and self is not ErrorCode.INTERNAL


_SYSTEM_CODES = frozenset(
    {
        ErrorCode.DATABASE_UNAVAILABLE,
        ErrorCode.TIMEOUT,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.DATABASE_SHUTTING_DOWN,
        ErrorCode.INTERNAL,
    }
)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one packet failed for one destination: a code and a one-line human message."""

    code: ErrorCode
    message: str

    @property
    def error_class(self) -> ErrorClass:
        return self.code.error_class


class KapowError(Exception):
    """Base of the exceptions KaPoW raises on purpose."""


class ConfigError(KapowError):
    """The configuration is invalid; the message is one line naming the key and the reason."""


class PacketError(KapowError):
    """A packet cannot be handled for a reason that is the client's; carries its :class:`Failure`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.failure = Failure(code, message)


class DestinationUnavailable(KapowError):
    """A destination database cannot be reached now; carries the system :class:`Failure`."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


# SQLSTATE -> code. Exact five-character states first, then two-character classes.
_SQLSTATE_EXACT: dict[str, ErrorCode] = {
    "42P01": ErrorCode.UNKNOWN_TABLE,  # undefined_table
    "3F000": ErrorCode.UNKNOWN_TABLE,  # invalid_schema_name
    "42703": ErrorCode.UNKNOWN_COLUMN,  # undefined_column
    "23502": ErrorCode.MISSING_COLUMN,  # not_null_violation
    "42804": ErrorCode.BAD_VALUE,  # datatype_mismatch
    "42846": ErrorCode.BAD_VALUE,  # cannot_coerce
    "428C9": ErrorCode.BAD_VALUE,  # generated_always
    "42501": ErrorCode.FORBIDDEN_DESTINATION,  # insufficient_privilege
    "53300": ErrorCode.TOO_MANY_CONNECTIONS,
    "57014": ErrorCode.TIMEOUT,  # query_canceled (statement_timeout)
    "55P03": ErrorCode.TIMEOUT,  # lock_not_available (lock_timeout)
    "57P01": ErrorCode.DATABASE_SHUTTING_DOWN,  # admin_shutdown
    "57P02": ErrorCode.DATABASE_SHUTTING_DOWN,  # crash_shutdown
    "57P03": ErrorCode.DATABASE_UNAVAILABLE,  # cannot_connect_now (starting up, recovery)
    "57P05": ErrorCode.TIMEOUT,  # idle_session_timeout
    "25006": ErrorCode.DATABASE_UNAVAILABLE,  # read_only_sql_transaction (a standby took the name)
}

_SQLSTATE_CLASS: dict[str, ErrorCode] = {
    "08": ErrorCode.DATABASE_UNAVAILABLE,  # connection exception
    "22": ErrorCode.BAD_VALUE,  # data exception
    "23": ErrorCode.CONSTRAINT_VIOLATION,  # integrity constraint violation
    "40": ErrorCode.TIMEOUT,  # transaction rollback (serialization, deadlock): retry
    "42": ErrorCode.BAD_VALUE,  # syntax error or access rule violation (from the packet's shape)
    "53": ErrorCode.DATABASE_UNAVAILABLE,  # insufficient resources (disk full, out of memory)
    "54": ErrorCode.BAD_VALUE,  # program limit exceeded (row too big, too many columns)
    "57": ErrorCode.DATABASE_UNAVAILABLE,  # operator intervention
    "58": ErrorCode.DATABASE_UNAVAILABLE,  # system error (I/O)
    "XX": ErrorCode.INTERNAL,  # internal error
}


def classify_sqlstate(sqlstate: str | None) -> ErrorCode:
    """Map a SQLSTATE to an error code. ``None`` (no answer from the server at all) means unreachable."""
    if not sqlstate:
        return ErrorCode.DATABASE_UNAVAILABLE
    exact = _SQLSTATE_EXACT.get(sqlstate)
    if exact is not None:
        return exact
    return _SQLSTATE_CLASS.get(sqlstate[:2], ErrorCode.INTERNAL)


def classify_exception(exc: BaseException) -> Failure:
    """Turn any exception met while writing into a :class:`Failure`, by SQLSTATE where there is one."""
    # Imported here so that this module stays importable (and unit-testable) without a database driver.
    import psycopg
    import psycopg_pool

    if isinstance(exc, psycopg_pool.PoolTimeout):
        return Failure(ErrorCode.TOO_MANY_CONNECTIONS, f"no free connection in the pool: {one_line(exc)}")
    if isinstance(exc, psycopg.Error):
        code = classify_sqlstate(exc.sqlstate)
        return Failure(code, one_line(exc))
    if isinstance(exc, TimeoutError):
        return Failure(ErrorCode.TIMEOUT, one_line(exc) or "timed out")
    if isinstance(exc, ConnectionError | OSError):
        return Failure(ErrorCode.DATABASE_UNAVAILABLE, one_line(exc))
    return Failure(ErrorCode.INTERNAL, f"{type(exc).__name__}: {one_line(exc)}")


def one_line(exc: BaseException | str, limit: int = 500) -> str:
    """The first line of an error message, trimmed: error headers and logs stay one line each."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"
