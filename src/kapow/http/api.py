"""The HTTP app: ``/metrics``, ``/healthz``, ``/readyz``, ``/api/...`` (DLQ, user errors, stats), the console.

The DLQ endpoints have the semantics of ``kapow dlq`` and use the same class
(:class:`kapow.deadletter.queue.DeadLetterQueue`); its reads are blocking Kafka reads, so they run in the
threadpool, never on the event loop. A list read is shared for two seconds (the console polls; Kafka should not
be read once per open tab and second); a reschedule or purge always decides on a fresh read, then drops it.

With ``KAPOW_ADMIN_TOKEN`` set, every ``/api`` call needs ``Authorization: Bearer <token>``. Every error a caller
can cause is a 4xx with a JSON body ``{"error": "<one line>"}``; Kafka being unreachable is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Annotated, Any, Protocol

import msgspec
from confluent_kafka import KafkaException, Message
from msgspec import UNSET, UnsetType
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from kapow import metrics
from kapow.config import Config
from kapow.deadletter.queue import DeadLetterQueue, DlqFilter, DlqRecord, decode_record, parse_time
from kapow.deadletter.recent import Trimmed, recent_records, trim
from kapow.errors import KapowError, one_line
from kapow.http.openapi import RELATIVE_PATTERN, openapi_document
from kapow.http.stats import HISTORY_S, Stats, gauge_value

log = logging.getLogger(__name__)

READ_TTL_S = 2.0
MAX_LIMIT = 1000
MAX_IDS = 10_000
MAX_CODE = 64
MAX_DESTINATION = 200
USER_ERRORS_PER_PARTITION = 200  # also the largest page of /api/user-errors: the newest N are among these
PREVIEW_BYTES = 240
VALUE_BYTES = 16 * 1024  # of a user error's value; the API says when it was cut ("truncated", "size")
_ID = re.compile(r"[0-9]{1,10}:[0-9]{1,19}")
_RELATIVE = re.compile(RELATIVE_PATTERN)
_RFC3339 = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})")
_NO_STORE = {"Cache-Control": "no-store"}


class DestinationsView(Protocol):
    """Circuits (``.state``) and pools (``.in_use``) per (vanity, database)."""

    def circuits(self) -> dict[tuple[str, str], Any]: ...

    def pools(self) -> dict[tuple[str, str], Any]: ...


class WriterView(Protocol):
    """What the HTTP side reads from the writer (:class:`kapow.pipeline.runner.Writer` is one)."""

    @property
    def ready(self) -> bool: ...

    @property
    def assigned(self) -> set[tuple[str, int]]: ...

    @property
    def totals(self) -> dict[str, int]: ...

    @property
    def started_at(self) -> float: ...

    @property
    def destinations(self) -> DestinationsView: ...


class RecordIdConvertor(Convertor[str]):
    """``partition:offset`` in a path: ``/api/dlq/purge`` is a route of its own, never a record id."""

    regex = _ID.pattern

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("kapow_record_id", RecordIdConvertor())


class ApiError(Exception):
    """An answer other than 200, with a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_Id = Annotated[str, msgspec.Meta(pattern=f"^{_ID.pattern}$")]


class Selection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of a bulk reschedule or purge: ids, a filter, or ``all`` (the rule of ``kapow dlq``)."""

    ids: Annotated[list[_Id], msgspec.Meta(max_length=MAX_IDS)] | UnsetType = UNSET
    code: Annotated[str, msgspec.Meta(max_length=MAX_CODE)] | UnsetType = UNSET
    destination: Annotated[str, msgspec.Meta(max_length=MAX_DESTINATION)] | UnsetType = UNSET
    since: str | UnsetType = UNSET
    until: str | UnsetType = UNSET
    all: bool = False


# ---------------------------------------------------------------------------------------------- Kafka reads
class _Queue(DeadLetterQueue):
    """The queue, plus a listing that keeps each record's metadata and a preview, never whole values: the list
    is what the console polls, and a parked packet may be up to ``max_packet_bytes`` (1 MiB by default)."""

    def summaries(self) -> list[Trimmed]:
        done = self.handled()
        out: list[Trimmed] = []

        def keep(msg: Message) -> None:
            if f"{msg.partition()}:{msg.offset()}" not in done:
                out.append(trim(decode_record(msg), PREVIEW_BYTES, headers=False))

        self._read(self.topic, keep)
        out.sort(key=lambda t: (t.record.failed_at_ms, t.record.partition, t.record.offset))
        return out


class Dlq:
    """The DLQ for the API: shared list reads (``READ_TTL_S``), one mutation at a time."""

    def __init__(self, config: Config) -> None:
        k = config.kafka
        self.topic = k.system_errors_topic
        self.queue = _Queue(k.bootstrap_servers, k.system_errors_topic, settings=k.settings, timeout=10.0)
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._cached: tuple[float, list[Trimmed]] | None = None

    def summaries(self) -> list[Trimmed]:
        """Every parked record, oldest first, values cut to a preview."""
        with self._read_lock:
            cached = self._cached
            if cached is not None and time.monotonic() - cached[0] < READ_TTL_S:
                return cached[1]
            parked = self.queue.summaries()
            self._cached = (time.monotonic(), parked)
            return parked

    def get(self, rid: str) -> DlqRecord | None:
        """One parked record in full (a fresh read that keeps only it)."""
        return self.queue.get(rid)

    def mutate(self, action: str, flt: DlqFilter, ids: list[str] | None) -> list[DlqRecord]:
        with self._write_lock:
            targets = self.queue.records(flt)  # a fresh read that keeps only the matching records
            if ids:
                missing = set(ids) - {r.id for r in targets}
                if missing:
                    raise ApiError(404, f"no parked record with id {', '.join(sorted(missing)[:10])} on {self.topic}")
            if action == "reschedule":
                orphans = [r.id for r in targets if not r.source_topic]
                if orphans:
                    raise ApiError(409, f"record {orphans[0]} has no kapow-source-topic header; it cannot be "
                                        "rescheduled (purge it instead)")
                self.queue.reschedule(targets)
            else:
                self.queue.purge(targets)
            self._cached = None
            return targets

    def close(self) -> None:
        self.queue.close()


class UserErrors:
    """Recent user errors, shared for ``READ_TTL_S``."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.topic = config.kafka.user_errors_topic
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Trimmed]] | None = None

    def records(self) -> list[Trimmed]:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < READ_TTL_S:
                return self._cached[1]
            k = self._config.kafka
            records = recent_records(k.bootstrap_servers, self.topic, settings=k.settings,
                                     per_partition=USER_ERRORS_PER_PARTITION, keep_bytes=VALUE_BYTES)
            self._cached = (time.monotonic(), records)
            return records


# ---------------------------------------------------------------------------------------------- helpers
def _only(request: Request, *allowed: str) -> None:
    """A misspelt parameter (``limt=5``) must not be silently ignored."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise ApiError(400, f"unknown query parameter {unknown[0][:40]!r} (known: {known})")


def _query_str(request: Request, name: str, max_length: int) -> str | None:
    text = request.query_params.get(name)
    if text is not None and len(text) > max_length:
        raise ApiError(400, f"{name}: at most {max_length} characters")
    return text


def _query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text) or not lo <= int(text) <= hi:
        raise ApiError(400, f"{name}: expected an integer from {lo} to {hi}, got {text[:40]!r}")
    return int(text)


def _time(name: str, text: str | None) -> int | None:
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


def _filter(code: str | None, destination: str | None, since: str | None, until: str | None,
            ids: list[str] | None = None) -> DlqFilter:
    if ids is not None:
        if len(ids) > MAX_IDS:
            raise ApiError(400, f"ids: at most {MAX_IDS} per call")
        bad = [i for i in ids if not _ID.fullmatch(i)]
        if bad:
            raise ApiError(400, f"ids: {bad[0][:40]!r} is not a record id (partition:offset)")
    return DlqFilter(ids=frozenset(ids) if ids else None, code=code or None, destination=destination or None,
                     since_ms=_time("since", since), until_ms=_time("until", until))


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=_NO_STORE)


def _listing(parked: Trimmed) -> dict[str, Any]:
    out = parked.record.to_json(with_value=False)
    out["size"] = parked.size
    out["value_preview"] = (parked.record.value or b"").decode("utf-8", "replace")
    return out


def _full(trimmed: Trimmed) -> dict[str, Any]:
    out = trimmed.record.to_json(with_value=True)
    out["size"] = trimmed.size
    out["truncated"] = trimmed.truncated
    return out


def _facets(parked: list[Trimmed]) -> dict[str, dict[str, int]]:
    codes: dict[str, int] = {}
    destinations: dict[str, int] = {}
    for r in (p.record for p in parked):
        codes[r.code] = codes.get(r.code, 0) + 1
        d = r.destination or {}
        where = f"{d.get('vanity', '-')}/{d.get('database', '-')}/{d.get('schema', '-')}.{d.get('table', '-')}"
        destinations[where] = destinations.get(where, 0) + 1
    return {"codes": codes, "destinations": destinations}


async def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking Kafka call in the threadpool; Kafka trouble becomes a 503, never a traceback."""
    try:
        return await run_in_threadpool(fn, *args)
    except (ApiError, HTTPException):
        raise
    except (KapowError, KafkaException) as exc:
        raise ApiError(503, f"Kafka: {one_line(exc)}") from None


class TokenGate:
    """Every ``/api`` call must carry ``Authorization: Bearer <token>`` when a token is configured."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._expected is not None and scope["type"] == "http" and scope["path"].startswith("/api"):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self._expected):
                reason = "missing" if not given else "wrong"
                response = JSONResponse({"error": f"unauthorized: {reason} bearer token (Authorization header)"},
                                        status_code=401, headers={"WWW-Authenticate": 'Bearer realm="kapow"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SecurityHeaders:
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

        await self.app(scope, receive, send_with_headers)


# ---------------------------------------------------------------------------------------------- the app
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
           "favicon.svg": "image/svg+xml"}
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _asset(name: str) -> bytes:
    return resources.files("kapow.http").joinpath("console", name).read_bytes()


def create_app(config: Config, writer: WriterView, *, token: str | None = None) -> ASGIApp:
    dlq = Dlq(config)
    user_errors = UserErrors(config)
    stats = Stats(writer.totals)
    stall_after = max(60.0, 2 * (config.pipeline.shutdown_deadline_s + config.pipeline.hold_s))
    index = _asset("index.html")
    assets = {name: _asset(name) for name in _ASSETS}
    spec = openapi_document()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async def sampler() -> None:
            while True:
                try:
                    stats.sample()
                except Exception as exc:  # pragma: no cover - a chart must never take the server down
                    log.debug("stats sample failed: %s", exc)
                await asyncio.sleep(1.0)

        task = asyncio.create_task(sampler())
        try:
            yield
        finally:
            task.cancel()
            await run_in_threadpool(dlq.close)

    # -- operations
    async def healthz(_request: Request) -> Response:
        beat = gauge_value(metrics.LOOP_HEARTBEAT)
        silent = time.time() - beat if beat > 0 else 0.0
        alive = silent < stall_after
        body = {"status": "ok" if alive else "stalled", "uptime_s": round(time.time() - writer.started_at, 1),
                "loop_silent_s": round(silent, 1)}
        return _json(body, 200 if alive else 503)

    def destinations() -> list[dict[str, Any]]:
        circuits = writer.destinations.circuits()
        pools = writer.destinations.pools()
        out = []
        for dest in config.destinations:
            for database in dest.databases:
                circuit = circuits.get((dest.vanity, database))
                pool = pools.get((dest.vanity, database))
                out.append({"vanity": dest.vanity, "database": database, "host": dest.host, "port": dest.port,
                            "circuit": circuit.state if circuit is not None else "closed",
                            "pool_in_use": pool.in_use if pool is not None else 0,
                            "max_connections": dest.max_connections})
        return out

    async def readyz(_request: Request) -> Response:
        ready = bool(writer.ready and writer.assigned)
        body = {"ready": ready, "partitions": len(writer.assigned),
                "destinations": [{k: d[k] for k in ("vanity", "database", "circuit")} for d in destinations()]}
        return _json(body, 200 if ready else 503)

    async def prometheus(_request: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def openapi(_request: Request) -> Response:
        return JSONResponse(spec)

    # -- console
    async def console(_request: Request) -> Response:
        return Response(index, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            raise ApiError(404, f"no console asset {name[:60]!r}")
        return Response(assets[name], media_type=_ASSETS[name], headers={"Cache-Control": "no-cache"})

    # -- API
    async def api_stats(request: Request) -> Response:
        _only(request, "seconds")
        seconds = _query_int(request, "seconds", HISTORY_S, 1, HISTORY_S)
        body = stats.snapshot(seconds)
        k = config.kafka
        body.update({
            "now_ms": round(time.time() * 1000), "started_at_ms": round(writer.started_at * 1000),
            "uptime_s": round(time.time() - writer.started_at, 1), "ready": bool(writer.ready and writer.assigned),
            "partitions": len(writer.assigned), "totals": dict(writer.totals), "destinations": destinations(),
            "topics": {"source": list(k.topics), "user_errors": k.user_errors_topic,
                       "system_errors": k.system_errors_topic},
            "group": k.group_id,
        })
        return _json(body)

    async def dlq_list(request: Request) -> Response:
        _only(request, "code", "destination", "since", "until", "limit", "offset")
        flt = _filter(_query_str(request, "code", MAX_CODE), _query_str(request, "destination", MAX_DESTINATION),
                      request.query_params.get("since"), request.query_params.get("until"))
        limit = _query_int(request, "limit", 100, 1, MAX_LIMIT)
        offset = _query_int(request, "offset", 0, 0, 100_000_000)
        parked: list[Trimmed] = await _blocking(dlq.summaries)
        matching = [p for p in reversed(parked) if flt.matches(p.record)]  # newest first
        return _json({"topic": dlq.topic, "total": len(matching), "parked": len(parked), "limit": limit,
                      "offset": offset, "records": [_listing(p) for p in matching[offset:offset + limit]],
                      "facets": _facets(parked)})

    def _path_id(request: Request) -> str:
        _only(request)
        rid: str = request.path_params["id"]
        return rid

    async def dlq_show(request: Request) -> Response:
        rid = _path_id(request)
        found: DlqRecord | None = await _blocking(dlq.get, rid)
        if found is None:
            raise ApiError(404, f"no parked record with id {rid} on {dlq.topic}")
        return _json(_full(trim(found, len(found.value or b""))))

    async def _mutate(action: str, flt: DlqFilter, ids: list[str] | None) -> Response:
        done: list[DlqRecord] = await _blocking(dlq.mutate, action, flt, ids)
        verb = "rescheduled" if action == "reschedule" else "purged"
        log.info("dlq %s", verb, extra={"fields": {"count": len(done), "ids": [r.id for r in done[:20]]}})
        return _json({"action": verb, "count": len(done), "ids": [r.id for r in done[:MAX_LIMIT]]})

    def one(action: str) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            rid = _path_id(request)
            return await _mutate(action, DlqFilter(ids=frozenset({rid})), [rid])

        return handler

    def bulk(action: str) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            _only(request)
            body = await request.body()
            try:
                sel = msgspec.json.decode(body or b"{}", type=Selection)
            except msgspec.ValidationError as exc:
                raise ApiError(400, f"body: {one_line(exc)}") from None
            except msgspec.DecodeError:
                raise ApiError(400, "body: expected a JSON object") from None
            ids = None if isinstance(sel.ids, UnsetType) else sel.ids
            code, destination, since, until = (None if isinstance(v, UnsetType) else v
                                               for v in (sel.code, sel.destination, sel.since, sel.until))
            if not (ids or code or destination or since or until or sel.all):
                raise ApiError(400, f"{action}: name record ids, a filter (code, destination, since, until), "
                                    "or all: true")
            return await _mutate(action, _filter(code, destination, since, until, ids), ids)

        return handler

    async def api_user_errors(request: Request) -> Response:
        _only(request, "code", "limit")
        limit = _query_int(request, "limit", 100, 1, USER_ERRORS_PER_PARTITION)
        code = _query_str(request, "code", MAX_CODE) or None
        records: list[Trimmed] = await _blocking(user_errors.records)
        matching = [t for t in records if code is None or t.record.code == code]
        return _json({"topic": user_errors.topic, "total": len(matching), "limit": limit,
                      "records": [_full(t) for t in matching[:limit]]})

    # -- errors
    async def on_api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _json({"error": exc.message}, exc.status)

    async def on_http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": one_line(exc.detail)}, status_code=exc.status_code,
                            headers={**_NO_STORE, **(exc.headers or {})})  # 405 keeps its Allow header

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.error("http %s %s failed: %s", request.method, request.url.path, one_line(exc), exc_info=exc)
        return _json({"error": f"internal error: {one_line(exc)}"}, 500)

    routes = [
        Route("/", console),
        Route("/console/{name}", asset),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", prometheus),
        Route("/openapi.json", openapi),
        Route("/api/stats", api_stats),
        Route("/api/dlq", dlq_list),
        Route("/api/dlq/reschedule", bulk("reschedule"), methods=["POST"]),
        Route("/api/dlq/purge", bulk("purge"), methods=["POST"]),
        Route("/api/dlq/{id:kapow_record_id}", dlq_show),
        Route("/api/dlq/{id:kapow_record_id}/reschedule", one("reschedule"), methods=["POST"]),
        Route("/api/dlq/{id:kapow_record_id}/purge", one("purge"), methods=["POST"]),
        Route("/api/user-errors", api_user_errors),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_crash})
    return SecurityHeaders(TokenGate(app, token))
