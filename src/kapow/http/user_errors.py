"""``/api/user-errors``: the newest user errors, read-only, newest first (``kapow errors list`` reads the same).

The read is bounded (the last ``USER_ERRORS_PER_PARTITION`` records of each partition, each cut to a fixed size:
values at 16 KiB, keys and each header at 1 KiB, headers in all at 16 KiB) and shared for two seconds between
callers.
"""

from __future__ import annotations

import threading
import time

from starlette.requests import Request
from starlette.responses import Response

from kapow.config import Config
from kapow.deadletter.recent import Trimmed, recent_records
from kapow.http.common import blocking, json_response, only, query_int, query_str
from kapow.http.dlq import MAX_CODE, READ_TTL_S, full
from kapow.http.state import state_of

USER_ERRORS_PER_PARTITION = 200  # also the largest page: the newest N are among these
VALUE_BYTES = 16 * 1024  # of a user error's value; the API says when it was cut ("truncated", "size")


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


async def api_user_errors(request: Request) -> Response:
    only(request, "code", "limit")
    limit = query_int(request, "limit", 100, 1, USER_ERRORS_PER_PARTITION)
    code = query_str(request, "code", MAX_CODE) or None
    user_errors = state_of(request).user_errors
    records: list[Trimmed] = await blocking(user_errors.records)
    matching = [t for t in records if code is None or t.record.code == code]
    return json_response({"topic": user_errors.topic, "total": len(matching), "limit": limit,
                          "records": [full(t) for t in matching[:limit]]})
