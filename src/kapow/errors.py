"""One error taxonomy for the whole pipeline: whose fault a failure is, and what it may hold back.

Every failure a packet can meet is one :class:`ErrorCode`, and the code's class decides its fate:

* ``user`` errors are the client's fault (bad JSON, unknown table, a value the column rejects, a trigger that
  refuses the row). They are never retried: the packet goes to the user-errors topic with a reason, and the
  stream keeps flowing.
* ``system`` errors are not the client's fault (database down, timeout, too many connections). The packet waits
  (``pipeline.hold_s``) and is retried; past that it is parked on the system-errors topic, a dead-letter queue
  from which it is redriven once its destination is healthy again.

Each failure is also charged to the smallest unit that owns it, its :class:`Scope` (PRODUCT.md §5): a bad row is
isolated by bisection and fails alone; a locked or slow table holds that table only; only a database that is
unwell (refused or lost connections, shutting down, out of resources) holds its database and opens its circuit.
That is what keeps one team's mistake from parking another team's packets.

Database errors are classified by SQLSTATE, never by Python exception type: the SQLSTATE is the server's own,
stable statement of what went wrong, and it survives driver upgrades.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorClass(enum.StrEnum):
    """Whose fault a failure is, which decides retry and topic."""

    USER = "user"
    SYSTEM = "system"


class Scope(enum.StrEnum):
    """The smallest unit a failure is charged to; it decides what waits while the failure lasts."""

    ROW = "row"  # this packet's row alone (bisection isolates it; the rest of its table lands)
    TABLE = "table"  # this table holds (lock, slow statement, conflict); other tables keep landing
    DATABASE = "database"  # this database holds and its circuit counts the failure; other databases go on


class ErrorCode(enum.StrEnum):
    """Stable error codes; documented in docs/errors.md. Never rename one: clients match on them."""

    # user errors
    NOT_JSON = "not_json"
    BAD_PACKET = "bad_packet"
    TOO_LARGE = "too_large"
    TOO_MANY_DESTINATIONS = "too_many_destinations"
    UNSUPPORTED_DESTINATION_TYPE = "unsupported_destination_type"
    UNKNOWN_DESTINATION = "unknown_destination"
    FORBIDDEN_DESTINATION = "forbidden_destination"
    FORBIDDEN_MODE = "forbidden_mode"
    UNKNOWN_TABLE = "unknown_table"
    UNSUPPORTED_TABLE = "unsupported_table"
    UNKNOWN_COLUMN = "unknown_column"
    MISSING_COLUMN = "missing_column"
    MISSING_KEY = "missing_key"
    BAD_VALUE = "bad_value"
    CONSTRAINT_VIOLATION = "constraint_violation"
    ROW_REJECTED = "row_rejected"
    NO_UNIQUE_KEY = "no_unique_key"
    BAD_CHANGE_EVENT = "bad_change_event"
    UNDECODABLE = "undecodable"
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
        """System errors may succeed later, so they are held and retried; user errors never are."""
        return self in _SYSTEM_CODES

    @property
    def scope(self) -> Scope:
        """The unit this code is charged to when nothing more precise is known (see :func:`classify_sqlstate`)."""
        return _DEFAULT_SCOPE.get(self, Scope.ROW)


_SYSTEM_CODES = frozenset(
    {
        ErrorCode.DATABASE_UNAVAILABLE,
        ErrorCode.TIMEOUT,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.DATABASE_SHUTTING_DOWN,
        ErrorCode.INTERNAL,
    }
)

_DEFAULT_SCOPE = {
    ErrorCode.DATABASE_UNAVAILABLE: Scope.DATABASE,
    ErrorCode.TOO_MANY_CONNECTIONS: Scope.DATABASE,
    ErrorCode.DATABASE_SHUTTING_DOWN: Scope.DATABASE,
    ErrorCode.TIMEOUT: Scope.TABLE,
    ErrorCode.INTERNAL: Scope.TABLE,
}

# Codes whose cause is the table itself, not one row: every row of a statement that meets one fails the same way,
# so bisecting the statement would spend 2n probes to learn nothing.
TABLE_WIDE_USER_CODES = frozenset(
    {ErrorCode.UNKNOWN_TABLE, ErrorCode.UNKNOWN_COLUMN, ErrorCode.FORBIDDEN_DESTINATION,
     ErrorCode.UNSUPPORTED_TABLE, ErrorCode.NO_UNIQUE_KEY}
)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one packet failed for one destination: a code, a one-line human message and the unit it is charged to."""

    code: ErrorCode
    message: str
    scope: Scope = Scope.ROW

    @property
    def error_class(self) -> ErrorClass:
        return self.code.error_class


def failure(code: ErrorCode, message: str) -> Failure:
    """A :class:`Failure` charged to the code's default scope."""
    return Failure(code, message, code.scope)


class KapowError(Exception):
    """Base of the exceptions KaPoW raises on purpose; its message is one line for a human."""


class ConfigError(KapowError):
    """The configuration is invalid; the message is one line naming the key and the reason."""


class PacketError(KapowError):
    """A packet cannot be handled for a reason that is the client's; carries its :class:`Failure`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.failure = Failure(code, message, Scope.ROW)


# SQLSTATE -> (code, scope). Exact five-character states first, then two-character classes; anything else is
# ``internal`` charged to the table: held and retried, never isolating a database or dropping a row to the client.
_SQLSTATE_EXACT: dict[str, tuple[ErrorCode, Scope]] = {
    "42P01": (ErrorCode.UNKNOWN_TABLE, Scope.ROW),  # undefined_table
    "3F000": (ErrorCode.UNKNOWN_TABLE, Scope.ROW),  # invalid_schema_name
    "42703": (ErrorCode.UNKNOWN_COLUMN, Scope.ROW),  # undefined_column
    "23502": (ErrorCode.MISSING_COLUMN, Scope.ROW),  # not_null_violation
    "42804": (ErrorCode.BAD_VALUE, Scope.ROW),  # datatype_mismatch
    "42846": (ErrorCode.BAD_VALUE, Scope.ROW),  # cannot_coerce
    "428C9": (ErrorCode.BAD_VALUE, Scope.ROW),  # generated_always
    "KPW01": (ErrorCode.MISSING_KEY, Scope.ROW),  # kapow.postgres.statements.NULL_KEY_STATE: a unique key is null
    "42501": (ErrorCode.FORBIDDEN_DESTINATION, Scope.ROW),  # insufficient_privilege
    "42809": (ErrorCode.UNSUPPORTED_TABLE, Scope.ROW),  # wrong_object_type (a view, a sequence)
    "21000": (ErrorCode.BAD_VALUE, Scope.ROW),  # cardinality_violation (a key given twice in one upsert)
    "53300": (ErrorCode.TOO_MANY_CONNECTIONS, Scope.DATABASE),
    "57014": (ErrorCode.TIMEOUT, Scope.TABLE),  # query_canceled (statement_timeout): a slow table
    "55P03": (ErrorCode.TIMEOUT, Scope.TABLE),  # lock_not_available (lock_timeout): a locked table
    "55006": (ErrorCode.TIMEOUT, Scope.TABLE),  # object_in_use
    "57P01": (ErrorCode.DATABASE_SHUTTING_DOWN, Scope.DATABASE),  # admin_shutdown
    "57P02": (ErrorCode.DATABASE_SHUTTING_DOWN, Scope.DATABASE),  # crash_shutdown
    "57P03": (ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # cannot_connect_now (starting up, recovery)
    "57P05": (ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # idle_session_timeout
    "25006": (ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # read_only_sql_transaction (a standby)
    "40001": (ErrorCode.TIMEOUT, Scope.TABLE),  # serialization_failure: retry
    "40P01": (ErrorCode.TIMEOUT, Scope.TABLE),  # deadlock_detected: retry
}

_SQLSTATE_CLASS: dict[str, tuple[ErrorCode, Scope]] = {
    "08": (ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # connection exception
    "53": (ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # insufficient resources (disk full, out of memory)
    "57": (ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # operator intervention
    "58": (ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE),  # system error (I/O)
    "40": (ErrorCode.TIMEOUT, Scope.TABLE),  # transaction rollback: retry
    "XX": (ErrorCode.INTERNAL, Scope.TABLE),  # internal error, e.g. a corrupt index: that table's problem
    # what one row makes the database refuse: the client's, isolated by bisection
    "22": (ErrorCode.BAD_VALUE, Scope.ROW),  # data exception
    "23": (ErrorCode.CONSTRAINT_VIOLATION, Scope.ROW),  # integrity constraint (deferred ones are made immediate)
    "42": (ErrorCode.BAD_VALUE, Scope.ROW),  # syntax error or access rule violation (from the packet's shape)
    "54": (ErrorCode.BAD_VALUE, Scope.ROW),  # program limit exceeded (index row too big, too many columns)
    "P0": (ErrorCode.ROW_REJECTED, Scope.ROW),  # PL/pgSQL RAISE EXCEPTION in a trigger
    "2F": (ErrorCode.ROW_REJECTED, Scope.ROW),  # SQL routine exception (in a trigger function)
    "38": (ErrorCode.ROW_REJECTED, Scope.ROW),  # external routine exception
    "39": (ErrorCode.ROW_REJECTED, Scope.ROW),  # external routine invocation exception
    "0A": (ErrorCode.UNSUPPORTED_TABLE, Scope.ROW),  # feature not supported on the table the client chose
    "44": (ErrorCode.CONSTRAINT_VIOLATION, Scope.ROW),  # WITH CHECK OPTION violation
}


def classify_sqlstate(sqlstate: str | None) -> tuple[ErrorCode, Scope]:
    """Map a SQLSTATE to (code, scope). ``None`` (no answer from the server at all) means unreachable."""
    if not sqlstate:
        return ErrorCode.DATABASE_UNAVAILABLE, Scope.DATABASE
    exact = _SQLSTATE_EXACT.get(sqlstate)
    if exact is not None:
        return exact
    return _SQLSTATE_CLASS.get(sqlstate[:2], (ErrorCode.INTERNAL, Scope.TABLE))


def classify_fenced(sqlstate: str) -> tuple[ErrorCode, Scope]:
    """:func:`classify_sqlstate` for a state the apply function's per-table fence caught: the server answered
    after it, so it is never the database's failure, whatever its class. A trigger may raise ``08006`` itself, or
    call a server that is down through dblink; counted as the database's, one tenant's trigger opened the circuit
    for every table of the database (a review, 2026-11-27). It is that table's: held, retried, then parked."""
    code, scope = classify_sqlstate(sqlstate)
    return (code, Scope.TABLE) if scope is Scope.DATABASE else (code, scope)


def classify_exception(exc: BaseException) -> Failure:
    """Turn any exception met while writing into a :class:`Failure`, by SQLSTATE where there is one."""
    # Imported here so that this module stays importable (and unit-testable) without a database driver.
    import psycopg

    if isinstance(exc, psycopg.Error):
        code, scope = classify_sqlstate(exc.sqlstate)
        return Failure(code, one_line(exc) or type(exc).__name__, scope)
    if isinstance(exc, TimeoutError):
        return Failure(ErrorCode.TIMEOUT, one_line(exc) or "timed out", Scope.DATABASE)
    if isinstance(exc, ConnectionError | OSError):
        return Failure(ErrorCode.DATABASE_UNAVAILABLE, one_line(exc) or type(exc).__name__, Scope.DATABASE)
    return Failure(ErrorCode.INTERNAL, f"{type(exc).__name__}: {one_line(exc)}", Scope.TABLE)


def one_line(exc: BaseException | str, limit: int = 500) -> str:
    """The first line of an error message, trimmed: error headers and logs stay one line each."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    first = "".join(ch if ch.isprintable() else " " for ch in first)
    return first if len(first) <= limit else first[: limit - 1] + "…"
