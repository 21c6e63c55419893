"""The HTTP app: ``/metrics``, ``/healthz``, ``/readyz``, ``/api/...`` (DLQ, user errors, stats, audit), the console.

:func:`create_app` only wires: it builds the shared :class:`~kapow.http.state.AppState` (kept on ``app.state``),
the routes to the module-level handlers, the error handlers and the middleware (token gate, security headers).
Each handler lives in a small module named after what it serves: :mod:`.health` (health, readiness, metrics,
OpenAPI), :mod:`.dlq`, :mod:`.user_errors`, :mod:`.stats`, :mod:`.audit`, :mod:`.pages` (the console).

With a token configured, every ``/api`` call needs ``Authorization: Bearer <token>``: a read token for every
``GET``, an admin token to reschedule or purge (:mod:`kapow.http.security`). Every error a caller can cause is a
4xx with a JSON body ``{"error": "<one line>"}``; Kafka being unreachable is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from kapow.config import Config
from kapow.errors import one_line
from kapow.http import audit, dlq, health, pages, stats, user_errors
from kapow.http.common import ID, NO_STORE, ApiError, json_response
from kapow.http.openapi import openapi_document
from kapow.http.security import SecurityHeaders, TokenGate, Tokens
from kapow.http.state import AppState, DestinationsView, WriterView

__all__ = ["DestinationsView", "WriterView", "create_app"]

log = logging.getLogger(__name__)


class RecordIdConvertor(Convertor[str]):
    """``partition:offset`` in a path: ``/api/dlq/purge`` is a route of its own, never a record id."""

    regex = ID.pattern

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("kapow_record_id", RecordIdConvertor())

ROUTES = [
    Route("/", pages.console),
    Route("/console/{name}", pages.asset),
    Route("/healthz", health.healthz),
    Route("/readyz", health.readyz),
    Route("/metrics", health.prometheus),
    Route("/openapi.json", health.openapi),
    Route("/api/stats", stats.api_stats),
    Route("/api/audit", audit.api_audit),
    Route("/api/dlq", dlq.dlq_list),
    Route("/api/dlq/reschedule", dlq.reschedule_bulk, methods=["POST"]),
    Route("/api/dlq/purge", dlq.purge_bulk, methods=["POST"]),
    Route("/api/dlq/{id:kapow_record_id}", dlq.dlq_show),
    Route("/api/dlq/{id:kapow_record_id}/reschedule", dlq.reschedule_one, methods=["POST"]),
    Route("/api/dlq/{id:kapow_record_id}/purge", dlq.purge_one, methods=["POST"]),
    Route("/api/user-errors", user_errors.api_user_errors),
]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Sample the writer's counters once a second for the charts, while the server runs."""
    state: AppState = app.state.kapow

    async def sampler() -> None:
        while True:
            try:
                state.stats.sample()
            except Exception as exc:  # pragma: no cover - a chart must never take the server down
                log.debug("stats sample failed: %s", exc)
            await asyncio.sleep(1.0)

    task = asyncio.create_task(sampler())
    try:
        yield
    finally:
        task.cancel()


async def on_api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response({"error": exc.message}, exc.status, exc.headers)


async def on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": one_line(exc.detail)}, status_code=exc.status_code,
                        headers={**NO_STORE, **(exc.headers or {})})  # 405 keeps its Allow header


async def on_crash(request: Request, exc: Exception) -> Response:
    log.error("http %s %s failed: %s", request.method, request.url.path, one_line(exc), exc_info=exc)
    return json_response({"error": f"internal error: {one_line(exc)}"}, 500)


def create_app(config: Config, writer: WriterView, *, token: str | None = None,
               tokens: Tokens | None = None) -> ASGIApp:
    """The app; ``tokens`` gate ``/api`` (``token`` alone: one admin token)."""
    index, assets = pages.load()
    state = AppState(
        config=config, writer=writer, dlq=dlq.Dlq(config), user_errors=user_errors.UserErrors(config),
        audits=audit.Audits(config), stats=stats.Stats(writer.totals),
        stall_after=max(60.0, 2 * (config.pipeline.shutdown_deadline_s + config.pipeline.hold_s)),
        spec=openapi_document(), index=index, assets=assets)
    app = Starlette(routes=ROUTES, lifespan=lifespan,
                    exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_crash})
    app.state.kapow = state
    return SecurityHeaders(TokenGate(app, tokens if tokens is not None else token))
