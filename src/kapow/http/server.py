"""Run the HTTP app (uvicorn) in a background thread of the writer process.

The listening socket is bound in the caller's thread, before the writer starts, so that a taken port or a bad
address fails ``kapow run`` at once with one line; so does an address other machines can reach when no token is
set (``KAPOW_ADMIN_TOKEN``, ``KAPOW_READ_TOKEN``, their ``_FILE`` forms or ``KAPOW_TOKENS_FILE``:
:mod:`kapow.http.security`): the DLQ API can republish and purge records, it is never left open. A token file that
cannot be read or a malformed line fails the start the same way.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from kapow.errors import KapowError

if TYPE_CHECKING:
    import uvicorn

    from kapow.config import Config
    from kapow.http.security import Tokens
    from kapow.http.state import WriterView

log = logging.getLogger(__name__)

TOKEN_ENV = "KAPOW_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise KapowError(f"http.listen: expected HOST:PORT, got {listen!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def admin_token() -> str | None:
    token = os.environ.get(TOKEN_ENV, "")
    return token or None


def bind(listen: str, token: str | bool | None) -> socket.socket:
    """The listening socket for ``listen``; refuses a reachable address without a token (``token``: one, or
    whether any is configured)."""
    host, port = split_listen(listen)
    if not token and not is_loopback(host):
        raise KapowError(f"http.listen {listen} is reachable from other machines: set {TOKEN_ENV} to protect the "
                         "DLQ API, or listen on 127.0.0.1")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise KapowError(f"http.listen {listen}: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise KapowError(f"http.listen {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class HttpServer:
    """uvicorn serving :func:`kapow.http.api.create_app` on a pre-bound socket, in a daemon thread."""

    def __init__(self, config: Config, writer: WriterView, *, token: str | None = None,
                 tokens: Tokens | None = None) -> None:
        """``tokens``: the roles' tokens (default: from the environment); ``token`` an admin token given by the
        caller, as ``KAPOW_ADMIN_TOKEN``."""
        from kapow.http.security import Tokens

        self.tokens = tokens if tokens is not None else Tokens.from_environment(admin=token)
        self._sock = bind(config.http.listen, self.tokens.enabled)
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        from kapow.http.api import create_app

        self.app = create_app(config, writer, tokens=self.tokens)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        import uvicorn

        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # our own line says where we listen
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="on", server_header=False,
                                timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        self._server = server
        thread = threading.Thread(target=self._serve, args=(server,), name="kapow-http", daemon=True)
        self._thread = thread
        thread.start()
        for _ in range(int(timeout / 0.02)):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.02)
        if not server.started:
            raise KapowError(f"HTTP server did not start on {self.url}")
        log.info("http listening", extra={"fields": {"url": self.url, "tokens": self.tokens.names}})

    def _serve(self, server: uvicorn.Server) -> None:
        try:
            server.run(sockets=[self._sock])
        except BaseException as exc:  # SystemExit from a failed startup included: the writer keeps running
            log.error("http server stopped: %s", exc)

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()
