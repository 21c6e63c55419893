"""A small, bounded connection pool per (vanity, database).

Why KaPoW's own and not ``psycopg_pool`` (decided again for issue 15, with its ``reconnect_failed`` and
``check`` hooks in view): when a database is down, psycopg_pool reconnects in a background thread and a caller
only ever sees ``PoolTimeout`` after its whole wait, with the real cause (refused, auth failed, too many clients,
shutting down) in a log line. KaPoW classifies that cause by SQLSTATE to decide whose fault it is and what it
holds (a row, a table, the database: :mod:`kapow.errors`), and a lane must learn within one connect timeout that
its database is gone, not after a pool wait. ``reconnect_failed`` reports the failure to the pool's owner, not
to the caller waiting for a connection, so the hooks do not close that gap. Here connections are opened by the
caller's own thread and the server's exception reaches it. Everything else a pool must do is kept: at most
``max_connections`` open at once (the database's load is bounded, a burst is paced out), idle connections are
reused, broken ones are dropped. The pool's own errors are ``psycopg.OperationalError``s, so they classify like
any other failure to reach the database.

The password may be a provider, asked again for every new connection: a callable, or a
:class:`kapow.config.Secret`, whose ``current()`` reads its file again when it came from ``password_file`` (a
Kubernetes secret, :meth:`kapow.config.DestinationConfig.password`). So a rotated password is used by the next
connection and a rotation needs no restart; open connections keep their session, as PostgreSQL lets them. A
provider that cannot give it (the file is missing mid-rotation) fails that connection like an unreachable server,
and is asked again on the next attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import pq
from psycopg.abc import RV, PQGen
from psycopg.conninfo import make_conninfo

from kapow.credentials import Secret

log = logging.getLogger(__name__)

Configure = Callable[[psycopg.Connection[tuple[object, ...]]], None]
Password = str | Callable[[], str | None] | None  # a fixed password, or a provider asked on every new connection


class PasswordUnavailable(psycopg.OperationalError):
    """The password provider could not give the password now (its one-line reason names the file or variable)."""


class PoolBusy(psycopg.OperationalError):
    """Every connection stayed lent out for the whole wait: our own back-pressure, not the database failing."""


class PoolClosed(psycopg.OperationalError):
    """The pool was closed (the writer is stopping) while a caller waited for a connection."""


class _BoundedConnection(psycopg.Connection[tuple[object, ...]]):
    """A connection whose every wait for the server is bounded by ``io_timeout`` seconds.

    statement_timeout is enforced by the server, so it cannot help when the server or the path to it hangs
    (a stalled proxy, a frozen host: the kernel still ACKs, keepalives pass). Without a bound, the worker
    thread waited forever, its batch never finished and the in-order commit window stopped every other
    destination too (chaos: stalled connection). On expiry the connection is closed (its state is unknown)
    and the caller gets an OperationalError, a retryable ``database_unavailable``.
    """

    io_timeout: float | None = None
    retire = False  # closed when given back, not kept idle (see :func:`retire`)

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        bound = self.io_timeout if timeout is None else timeout
        try:
            return super().wait(gen, interval, bound)
        except psycopg.errors._WaitTimeout:
            self.pgconn.finish()
            raise psycopg.OperationalError(f"no answer from the server within {bound:.0f} s; connection closed") \
                from None


def retire(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Close ``conn`` when it is given back instead of keeping it: it sent a statement of many MB, and libpq keeps
    its buffers at the largest message a connection ever sent (31 MB of RSS after 0.9 MB rows, for good)."""
    if isinstance(conn, _BoundedConnection):
        conn.retire = True


class ConnectionPool:
    """At most ``max_size`` connections to one database; ``connection()`` lends one for a ``with`` block."""

    def __init__(
        self,
        *,
        name: str,
        conninfo: str,
        password: Password = None,
        max_size: int = 4,
        wait_timeout: float = 30.0,
        max_idle: float = 10 * 60.0,
        configure: Configure | None = None,
        io_timeout: float | None = None,
    ) -> None:
        self.name = name
        self._conninfo = conninfo
        self._password = password
        self.max_size = max_size
        self._wait_timeout = wait_timeout
        self._max_idle = max_idle
        self._configure = configure
        self._io_timeout = io_timeout  # longest wait for any answer from the server (None: no bound)
        self._idle: list[tuple[psycopg.Connection[tuple[object, ...]], float]] = []
        self._lent: set[psycopg.Connection[tuple[object, ...]]] = set()
        self._open = 0  # connections in use or idle
        self._cond = threading.Condition()
        self._closed = False

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._open - len(self._idle)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        conn = self._acquire()
        with self._cond:
            self._lent.add(conn)
        try:
            yield conn
        finally:
            with self._cond:
                self._lent.discard(conn)
            self._release(conn)

    def cancel_running(self) -> int:
        """Ask the server to cancel whatever the lent connections are running (a stop or a revoke gave up on it).

        Without this, a statement waiting on a lock would land after the writer had let its packets go to
        another owner. Returns how many connections were asked.
        """
        with self._cond:
            lent = list(self._lent)
        for conn in lent:
            try:
                conn.cancel_safe(timeout=2.0)
            except Exception as exc:  # best effort: the connection may be gone already
                log.debug("cancel on %s: %s", self.name, exc)
        return len(lent)

    def _acquire(self) -> psycopg.Connection[tuple[object, ...]]:
        deadline = time.monotonic() + self._wait_timeout
        with self._cond:
            while True:
                if self._closed:
                    raise PoolClosed(f"pool {self.name} is closed")
                while self._idle:
                    conn, since = self._idle.pop()
                    if conn.closed or time.monotonic() - since > self._max_idle:
                        self._discard_locked(conn)
                        continue
                    return conn
                if self._open < self.max_size:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolBusy(f"no free connection to {self.name} within {self._wait_timeout:.0f} s")
                self._cond.wait(left)
        try:  # connect outside the lock: a slow or dead server must not block the other callers
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _current_password(self) -> str | None:
        if self._password is None or (isinstance(self._password, str) and not isinstance(self._password, Secret)):
            return self._password
        try:
            return self._password.current() if isinstance(self._password, Secret) else self._password()
        except Exception as exc:  # the reason is one line naming the key (kapow.config.SecretUnreadable)
            raise PasswordUnavailable(f"password for {self.name}: {exc}") from None

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        password = self._current_password()
        conninfo = make_conninfo(self._conninfo, password=password) if password else self._conninfo
        conn = _BoundedConnection.connect(conninfo)
        conn.io_timeout = self._io_timeout
        try:
            if self._configure is not None:
                self._configure(conn)
        except BaseException:
            conn.close()
            raise
        log.debug("opened connection to %s", self.name)
        return conn

    def _release(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        healthy = not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE
        if getattr(conn, "retire", False):
            healthy = False
        elif not healthy and not conn.closed:
            try:  # a connection lent back mid-transaction (an error path) is rolled back, not trusted
                conn.rollback()
                healthy = conn.info.transaction_status == pq.TransactionStatus.IDLE
            except psycopg.Error:
                healthy = False
        with self._cond:
            if healthy and not self._closed:
                self._idle.append((conn, time.monotonic()))
            else:
                self._discard_locked(conn)
            self._cond.notify()

    def _discard_locked(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self._open -= 1
        try:
            conn.close()
        except psycopg.Error:  # pragma: no cover - closing a broken socket
            pass

    def discard_idle(self) -> None:
        """Drop idle connections (after a server restart they are all dead)."""
        with self._cond:
            while self._idle:
                self._discard_locked(self._idle.pop()[0])
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            while self._idle:
                self._discard_locked(self._idle.pop()[0])
            self._cond.notify_all()
