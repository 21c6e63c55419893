"""The ``/api`` gate (two roles, named tokens) and the security headers every answer carries (ASGI middleware).

Two roles: a **read** token may list, show, summarise and audit (every ``GET``); an **admin** token may also
reschedule and purge (every other method). Tokens come from the environment or from files (a Kubernetes secret
mounted as a file keeps the value out of the pod spec and of ``/proc/<pid>/environ``):

* ``KAPOW_ADMIN_TOKEN`` or ``KAPOW_ADMIN_TOKEN_FILE``: the admin token, named ``admin``;
* ``KAPOW_READ_TOKEN`` or ``KAPOW_READ_TOKEN_FILE``: the read token, named ``read``;
* ``KAPOW_TOKENS_FILE``: one named token a line, ``NAME ROLE TOKEN`` (``#`` starts a comment), so that each person
  or tool has its own and the log says who purged what.

A token is compared in constant time: the given and the expected are hashed first (equal lengths), every configured
token is compared, and none is skipped when one matches, so the time taken says nothing about which one, or how
much of one, was right. The name of the token used, never the token, goes to the handlers (``scope["kapow.who"]``):
each mutation is logged with it and counted (:data:`kapow.metrics.API_MUTATIONS`). With no token at all the API is
open, which :func:`kapow.http.server.bind` allows on loopback only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from kapow.credentials import read_text_file
from kapow.errors import KapowError

log = logging.getLogger(__name__)

Role = Literal["read", "admin"]
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_TOKEN_CHARS = 16
MAX_TOKEN_FILE_BYTES = 1024 * 1024
ANONYMOUS = "anonymous"  # who, when no token is configured (loopback only)
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# (variable, file variable, name, role) for the two single tokens
SINGLE_TOKENS: tuple[tuple[str, str, str, Role], ...] = (
    ("KAPOW_ADMIN_TOKEN", "KAPOW_ADMIN_TOKEN_FILE", "admin", "admin"),
    ("KAPOW_READ_TOKEN", "KAPOW_READ_TOKEN_FILE", "read", "read"),
)
TOKENS_FILE = "KAPOW_TOKENS_FILE"


@dataclass(frozen=True, slots=True)
class Token:
    """A configured token: its name (logged), its role and the SHA-256 of its value (compared)."""

    name: str
    role: Role
    digest: bytes

    def __repr__(self) -> str:
        return f"Token({self.name!r}, {self.role!r})"


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class Tokens:
    """The configured tokens, immutable once built; :meth:`identify` finds the one a request carries."""

    def __init__(self, tokens: list[tuple[str, Role, str]] | None = None) -> None:
        built: list[Token] = []
        names: set[str] = set()
        digests: set[bytes] = set()
        for name, role, value in tokens or []:
            if not _NAME.fullmatch(name):
                raise KapowError(f"token name {name[:80]!r}: letters, digits, '_', '.', '@', '-'; at most 64")
            if role not in ("read", "admin"):
                raise KapowError(f"token {name}: role must be read or admin, got {role[:20]!r}")
            if len(value) < MIN_TOKEN_CHARS or any(ch.isspace() for ch in value):
                raise KapowError(f"token {name}: at least {MIN_TOKEN_CHARS} characters, no spaces")
            digest = _digest(value.encode())
            if name in names or digest in digests:
                raise KapowError(f"token {name}: its name or its value is given twice")
            names.add(name)
            digests.add(digest)
            built.append(Token(name, role, digest))
        self._tokens = tuple(built)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *, admin: str | None = None) -> Tokens:
        """The tokens the environment names (see the module's docstring); ``admin`` is an admin token given by
        the caller, the same as ``KAPOW_ADMIN_TOKEN``. A bad file or line fails with one line naming it."""
        env = os.environ if environ is None else environ
        found: list[tuple[str, Role, str]] = []
        for variable, file_variable, name, role in SINGLE_TOKENS:
            value = admin if (role == "admin" and admin) else env.get(variable) or None
            path = env.get(file_variable) or None
            if value is not None and path is not None:
                raise KapowError(f"{file_variable}: set {variable} or {file_variable}, not both")
            if path is not None:
                value = read_text_file(path, file_variable, MAX_TOKEN_FILE_BYTES).strip()
            if value is not None:
                found.append((name, role, value))
        path = env.get(TOKENS_FILE) or None
        if path is not None:
            for n, line in enumerate(read_text_file(path, TOKENS_FILE, MAX_TOKEN_FILE_BYTES).splitlines(), 1):
                fields = line.split("#", 1)[0].split()
                if not fields:
                    continue
                if len(fields) != 3 or fields[1] not in ("read", "admin"):
                    raise KapowError(f"{TOKENS_FILE}: {path} line {n}: expected NAME ROLE TOKEN, ROLE read or "
                                     "admin")
                role_field: Role = "admin" if fields[1] == "admin" else "read"
                found.append((fields[0], role_field, fields[2]))
        try:
            return cls(found)
        except KapowError as exc:
            raise KapowError(f"HTTP tokens: {exc}") from None

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._tokens]

    def identify(self, given: bytes) -> Token | None:
        """The token whose value is ``given``, or None; in constant time (see the module's docstring)."""
        digest = _digest(given)
        found = None
        for token in self._tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found


def _answer(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store", **headers})


class TokenGate:
    """Every ``/api`` call must carry ``Authorization: Bearer <token>`` when any token is configured; a call that
    changes something (any method but GET, HEAD, OPTIONS) needs an admin token. Sets ``scope["kapow.who"]``."""

    def __init__(self, app: ASGIApp, tokens: Tokens | str | None) -> None:
        self.app = app
        self.tokens = tokens if isinstance(tokens, Tokens) else Tokens([("admin", "admin", tokens)] if tokens
                                                                        else [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        mutation = scope["method"] not in READ_METHODS
        if not self.tokens.enabled:
            scope["kapow.who"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, given = header.partition(b" ")
        token = self.tokens.identify(given.strip()) if scheme.lower() == b"bearer" else None
        if token is None:
            reason = "missing" if not header else "wrong"
            response = _answer(401, f"unauthorized: {reason} bearer token (Authorization header)",
                               **{"WWW-Authenticate": 'Bearer realm="kapow"'})
            await response(scope, receive, send)
            return
        if mutation and token.role != "admin":
            log.warning("api: %s %s refused to the read token %s", scope["method"], scope["path"][:200], token.name,
                        extra={"fields": {"who": token.name, "method": scope["method"]}})
            response = _answer(403, f"forbidden: the token {token.name!r} may read, not reschedule or purge "
                                    "(an admin token may)")
            await response(scope, receive, send)
            return
        scope["kapow.who"] = token.name
        await self.app(scope, receive, send)


def who(scope: Mapping[str, Any]) -> str:
    """The name of the token a request came with (``anonymous`` when the API is open)."""
    name = scope.get("kapow.who", ANONYMOUS)
    return name if isinstance(name, str) else ANONYMOUS


class SecurityHeaders:
    """No sniffing, no framing, no referrer: the console shows payloads, which are the clients' data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send)
