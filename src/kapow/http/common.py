"""Request parsing and answers shared by the handlers: one-line JSON errors, strict parameters, blocking calls.

Every error a caller can cause is a 4xx with a JSON body ``{"error": "<one line>"}``; Kafka or a database being
unreachable is a 503. A misspelt parameter is refused, never silently ignored.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from kapow.deadletter.records import parse_time
from kapow.errors import KapowError, one_line
from kapow.http.openapi import RELATIVE_PATTERN

NO_STORE = {"Cache-Control": "no-store"}
ID = re.compile(r"[0-9]{1,10}:[0-9]{1,19}")
_RELATIVE = re.compile(RELATIVE_PATTERN)
_RFC3339 = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


class ApiError(Exception):
    """An answer other than 200, with a one-line reason."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={**NO_STORE, **(headers or {})})


def only(request: Request, *allowed: str) -> None:
    """A misspelt parameter (``limt=5``) must not be silently ignored."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise ApiError(400, f"unknown query parameter {unknown[0][:40]!r} (known: {known})")


def query_str(request: Request, name: str, max_length: int) -> str | None:
    text = request.query_params.get(name)
    if text is not None and len(text) > max_length:
        raise ApiError(400, f"{name}: at most {max_length} characters")
    return text


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text) or not lo <= int(text) <= hi:
        raise ApiError(400, f"{name}: expected an integer from {lo} to {hi}, got {text[:40]!r}")
    return int(text)


def query_time(name: str, text: str | None) -> int | None:
    """A relative time (``15m``) or an RFC 3339 date-time (what the OpenAPI document promises, no more)."""
    if text is None or text == "":
        return None
    try:
        if _RELATIVE.fullmatch(text):
            return parse_time(text)
        found = _RFC3339.fullmatch(text)
        if not found:
            raise ValueError(text)
        head, fraction, zone = found.groups()
        zone = "+00:00" if zone in ("Z", "z") else zone
        moment = dt.datetime.fromisoformat(head.replace("t", "T") + (fraction or "")[:7] + zone)
        return int(moment.timestamp() * 1000)
    except (KapowError, OverflowError, OSError, ValueError):
        raise ApiError(400, f"{name}: cannot read time {text[:40]!r}: use RFC 3339 (2026-11-24T10:00:00Z) "
                            "or 15m / 2h / 1d ago") from None


async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking Kafka or database call in the threadpool; their trouble becomes a 503, never a traceback."""
    try:
        return await run_in_threadpool(fn, *args)
    except (ApiError, HTTPException):
        raise
    except KafkaException as exc:
        raise ApiError(503, f"Kafka: {one_line(exc)}") from None
    except KapowError as exc:
        raise ApiError(503, one_line(exc)) from None
