"""``/api/dlq``: the dead-letter queue over HTTP, with the semantics (and the code) of ``kapow dlq``.

One order everywhere: oldest first, by failure time, then partition and offset; a page ends with ``next_after``,
the cursor for the next one. Reads stream the whole queue (:class:`kapow.deadletter.queue.DeadLetterQueue`), so a
page costs a read of the topic: a page is shared between callers for two seconds, or twice as long as its read
took (the console polls; Kafka should not be read once per open tab and second), a reschedule or purge always
decides on a fresh read, one at a time, and drops what was shared.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from kapow import metrics
from kapow.config import Config
from kapow.deadletter.mover import Outcome, Verb
from kapow.deadletter.queue import CannotReschedule, DeadLetterQueue, Page, UnknownRecord
from kapow.deadletter.records import DlqFilter, DlqRecord, Trimmed, trim
from kapow.errors import one_line
from kapow.http.common import ID, ApiError, blocking, json_response, only, query_int, query_str, query_time
from kapow.http.security import who
from kapow.http.state import state_of

log = logging.getLogger(__name__)

READ_TTL_S = 2.0
MAX_LIMIT = 1000
MAX_IDS = 10_000
MAX_CODE = 64
MAX_DESTINATION = 200
PREVIEW_BYTES = 240
_CACHED_PAGES = 16

_Id = Annotated[str, msgspec.Meta(pattern=f"^{ID.pattern}$")]


class Selection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of a bulk reschedule or purge: ids, a filter, or ``all`` (the rule of ``kapow dlq``)."""

    ids: Annotated[list[_Id], msgspec.Meta(max_length=MAX_IDS)] | UnsetType = UNSET
    code: Annotated[str, msgspec.Meta(max_length=MAX_CODE)] | UnsetType = UNSET
    destination: Annotated[str, msgspec.Meta(max_length=MAX_DESTINATION)] | UnsetType = UNSET
    since: str | UnsetType = UNSET
    until: str | UnsetType = UNSET
    all: bool = False


class Dlq:
    """The queue for the API: pages shared for ``READ_TTL_S``, one mutation at a time."""

    def __init__(self, config: Config) -> None:
        k = config.kafka
        self.topic = k.system_errors_topic
        self.queue = DeadLetterQueue(k.bootstrap_servers, k.system_errors_topic, settings=k.settings, timeout=10.0)
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pages: dict[tuple[Any, ...], tuple[float, Page]] = {}

    def page(self, flt: DlqFilter, limit: int, after: str | None, skip: int) -> Page:
        key = (flt, limit, after, skip)
        with self._read_lock:
            cached = self._pages.get(key)
            if cached is not None and time.monotonic() < cached[0]:
                return cached[1]
            started = time.monotonic()
            try:
                page = self.queue.page(flt, limit=limit, after=after, skip=skip, preview_bytes=PREVIEW_BYTES)
            except UnknownRecord as exc:
                raise ApiError(404, f"after: {exc}") from None
            if len(self._pages) >= _CACHED_PAGES:
                self._pages.clear()
            # shared for READ_TTL_S, or twice as long as the read took: a queue of a million records takes seconds
            # to read, and an open console must not keep Kafka reading it back to back
            took = time.monotonic() - started
            self._pages[key] = (time.monotonic() + max(READ_TTL_S, 2 * took), page)
            return page

    def get(self, rid: str) -> DlqRecord | None:
        """One parked record in full (a fresh read of that offset)."""
        return self.queue.get(rid)

    def mutate(self, verb: Verb, flt: DlqFilter, ids: list[str] | None) -> Outcome:
        with self._write_lock:
            try:
                if ids:
                    self.queue.check_ids(ids, verb=verb)
                outcome = self.queue.move(verb, flt)
            except UnknownRecord as exc:
                raise ApiError(404, one_line(exc)) from None
            except CannotReschedule as exc:
                raise ApiError(409, one_line(exc)) from None
            finally:
                with self._read_lock:
                    self._pages.clear()
            return outcome


def dlq_filter(code: str | None, destination: str | None, since: str | None, until: str | None,
               ids: list[str] | None = None) -> DlqFilter:
    if ids is not None:
        if len(ids) > MAX_IDS:
            raise ApiError(400, f"ids: at most {MAX_IDS} per call")
        bad = [i for i in ids if not ID.fullmatch(i)]
        if bad:
            raise ApiError(400, f"ids: {bad[0][:40]!r} is not a record id (partition:offset)")
    return DlqFilter(ids=frozenset(ids) if ids else None, code=code or None, destination=destination or None,
                     since_ms=query_time("since", since), until_ms=query_time("until", until))


def listing(parked: Trimmed) -> dict[str, Any]:
    out = parked.record.to_json(with_value=False)
    out["size"] = parked.size
    out["value_preview"] = (parked.record.value or b"").decode("utf-8", "replace")
    return out


def full(trimmed: Trimmed) -> dict[str, Any]:
    return trimmed.record.to_json(with_value=True) | trimmed.cut_json()


async def dlq_list(request: Request) -> Response:
    only(request, "code", "destination", "since", "until", "limit", "offset", "after")
    flt = dlq_filter(query_str(request, "code", MAX_CODE), query_str(request, "destination", MAX_DESTINATION),
                     request.query_params.get("since"), request.query_params.get("until"))
    limit = query_int(request, "limit", 100, 1, MAX_LIMIT)
    skip = query_int(request, "offset", 0, 0, 100_000_000)
    after = request.query_params.get("after")
    if after is not None and not ID.fullmatch(after):
        raise ApiError(400, f"after: {after[:40]!r} is not a record id (partition:offset)")
    dlq = state_of(request).dlq
    page: Page = await blocking(dlq.page, flt, limit, after, skip)
    s = page.summary
    return json_response({"topic": dlq.topic, "order": "oldest first", "total": page.total, "parked": s.parked,
                          "limit": limit, "offset": skip, "after": after, "next_after": page.next_after,
                          "records": [listing(p) for p in page.records],
                          "facets": {"codes": s.codes, "destinations": s.destinations}})


def _path_id(request: Request) -> str:
    only(request)
    rid: str = request.path_params["id"]
    return rid


async def dlq_show(request: Request) -> Response:
    rid = _path_id(request)
    dlq = state_of(request).dlq
    found: DlqRecord | None = await blocking(dlq.get, rid)
    if found is None:
        raise ApiError(404, f"no parked record with id {rid} on {dlq.topic}")
    return json_response(full(trim(found, len(found.value or b""))))


def _what(flt: DlqFilter) -> dict[str, Any]:
    """The selection, for the log line of a mutation (ids are counted: the outcome lists those acted on)."""
    out: dict[str, Any] = {k: v for k, v in (("code", flt.code), ("destination", flt.destination),
                                             ("since_ms", flt.since_ms), ("until_ms", flt.until_ms)) if v is not None}
    if flt.ids is not None:
        out["ids"] = len(flt.ids)
    return out or {"all": True}


async def _mutate(request: Request, verb: Verb, flt: DlqFilter, ids: list[str] | None) -> Response:
    """Reschedule or purge; logged with who (the token's name), what and how many, and counted."""
    name = who(request.scope)
    fields = {"who": name, "action": verb.value, "selection": _what(flt)}
    try:
        outcome: Outcome = await blocking(state_of(request).dlq.mutate, verb, flt, ids)
    except ApiError as exc:
        log.info("dlq %s by %s refused: %s", verb.value, name, exc.message, extra={"fields": {**fields,
                                                                                          "status": exc.status}})
        raise
    metrics.API_MUTATIONS.labels(verb.value, name).inc()
    log.info("dlq %s by %s: %d record(s)", verb.done, name, outcome.count,
             extra={"fields": {**fields, "count": outcome.count, "ids": outcome.ids[:20]}})
    return json_response(outcome.to_json())


async def reschedule_one(request: Request) -> Response:
    rid = _path_id(request)
    return await _mutate(request, Verb.RESCHEDULE, DlqFilter(ids=frozenset({rid})), [rid])


async def purge_one(request: Request) -> Response:
    rid = _path_id(request)
    return await _mutate(request, Verb.PURGE, DlqFilter(ids=frozenset({rid})), [rid])


async def _bulk(request: Request, verb: Verb) -> Response:
    only(request)
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
        raise ApiError(400, f"{verb.value}: name record ids, a filter (code, destination, since, until), or all: true")
    return await _mutate(request, verb, dlq_filter(code, destination, since, until, ids), ids)


async def reschedule_bulk(request: Request) -> Response:
    return await _bulk(request, Verb.RESCHEDULE)


async def purge_bulk(request: Request) -> Response:
    return await _bulk(request, Verb.PURGE)
