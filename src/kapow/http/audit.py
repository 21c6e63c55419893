"""``GET /api/audit``: ``kapow audit`` over HTTP, for the console's panel and for scripts.

An audit reads every record of the input topics and joins them in the database: for a busy topic that is tens
of seconds of work. So it runs in the threadpool, one at a time per writer (a second call while one runs is a
409 with ``Retry-After``, not a queue of threads), and its answer is bounded: the counts, one row per partition
and at most ``MAX_EXAMPLES`` missing records.
"""

from __future__ import annotations

import re
import threading

from starlette.requests import Request
from starlette.responses import Response

from kapow.audit import AuditReport, audit, parse_offsets
from kapow.audit.run import BadRange
from kapow.config import Config
from kapow.errors import KapowError, one_line
from kapow.http.common import ApiError, blocking, json_response, only, query_int, query_str, query_time
from kapow.http.openapi import OFFSETS_PATTERN
from kapow.http.state import state_of

MAX_EXAMPLES = 100



class Audits:
    """Runs one audit at a time for this writer's config."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()

    def run(self, topic: str | None, since_ms: int | None, offsets: dict[int, int] | None,
            examples: int) -> AuditReport:
        if not self._lock.acquire(blocking=False):
            raise ApiError(409, "an audit is already running on this writer; try again when it is done",
                           {"Retry-After": "10"})
        try:
            return audit(self._config, topic=topic, since_ms=since_ms, from_offsets=offsets, examples=examples)
        except BadRange as exc:
            raise ApiError(404, one_line(exc)) from None
        finally:
            self._lock.release()


async def api_audit(request: Request) -> Response:
    only(request, "topic", "since", "from_offsets", "examples")
    state = state_of(request)
    topic = query_str(request, "topic", 249) or None
    if topic is not None and topic not in state.config.consumed_topics:
        raise ApiError(404, f"topic: {topic[:60]!r} is not one of the writer's topics")
    since = query_time("since", request.query_params.get("since"))
    text = query_str(request, "from_offsets", 30_000)
    offsets = None
    if text is not None:
        if not re.fullmatch(OFFSETS_PATTERN, text):
            raise ApiError(400, "from_offsets: expected PARTITION:OFFSET,... (e.g. 0:1200,1:980)")
        if topic is None and len(state.config.consumed_topics) != 1:
            raise ApiError(400, "from_offsets needs one topic: name it with topic")
        try:
            offsets = parse_offsets(text)
        except KapowError as exc:
            raise ApiError(400, one_line(exc)) from None
    examples = query_int(request, "examples", 10, 0, MAX_EXAMPLES)
    report: AuditReport = await blocking(state.audits.run, topic, since, offsets, examples)
    return json_response(report.to_json())
