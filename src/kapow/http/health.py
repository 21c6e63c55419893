"""``/healthz`` (the loop turns), ``/readyz`` (partitions held; each destination's circuit), ``/metrics``
(Prometheus) and ``/openapi.json``: the endpoints orchestrators and scrapers call, open without a token."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kapow import metrics
from kapow.http.common import json_response
from kapow.http.state import destinations, is_ready, state_of
from kapow.http.stats import gauge_value


async def healthz(request: Request) -> Response:
    state = state_of(request)
    beat = gauge_value(metrics.LOOP_HEARTBEAT)
    silent = time.time() - beat if beat > 0 else 0.0
    alive = silent < state.stall_after
    committing, why = state.writer.health()
    body = {"status": "ok" if alive and committing else "stalled",
            "uptime_s": round(time.time() - state.writer.started_at, 1), "loop_silent_s": round(silent, 1)}
    if not committing:
        body["reason"] = why
    return json_response(body, 200 if alive and committing else 503)


async def readyz(request: Request) -> Response:
    state = state_of(request)
    ready = is_ready(state)
    body = {"ready": ready, "partitions": len(state.writer.assigned),
            "destinations": [{k: d[k] for k in ("vanity", "database", "circuit")} for d in destinations(state)]}
    return json_response(body, 200 if ready else 503)


async def prometheus(_request: Request) -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return JSONResponse(state_of(request).spec)
