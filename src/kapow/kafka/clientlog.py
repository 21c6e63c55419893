"""librdkafka's own log lines and errors, through KaPoW's logging, rate-limited.

Left to itself librdkafka prints raw ``%3|...|FAIL|...`` lines to stderr: with the broker down that is one line per
reconnect attempt (124 lines in 30 s for ``kapow send``, 329 in 12 s for ``kapow run``, issue 18), and it breaks
``[log] format = "json"``, whose stderr must stay pure JSON. confluent-kafka can hand those lines to a Python
``logger`` instead (served by ``poll``/``consume``/``flush``, on the caller's thread); :class:`LibrdkafkaLog` is that
logger: it forwards to the ``kapow.kafka.librdkafka`` logger, and lets the same message through at most once per
window (10 s), saying how many repeats it held back.

The connection failures librdkafka logs (facility ``FAIL``) also arrive at the ``error_cb``; :class:`BrokerErrors`
is that callback and turns them into KaPoW's own line, which names the bootstrap address the user configured (the
raw lines name ``ipv4#127.0.0.1:9092/bootstrap``) and the reason, so the raw ``FAIL`` lines drop to DEBUG.

Each client gets its own instances (:func:`client_logging`): no state is shared between clients or kept at module
level, and each limiter is bounded in the number of distinct messages it remembers.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

LIBRDKAFKA_LOGGER = "kapow.kafka.librdkafka"
BROKER_LOGGER = "kapow.kafka"
WINDOW_S = 10.0
MAX_KEYS = 256

# Facilities whose lines the error_cb reports in KaPoW's own words (see BrokerErrors): logged at DEBUG only.
DEMOTED_FACILITIES = frozenset({"FAIL", "ERROR"})

# Transport-level errors: the broker cannot be reached (as opposed to a refused request, a bad config, ...).
UNREACHABLE = frozenset({
    KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE,
    KafkaError._TIMED_OUT, KafkaError._SSL, KafkaError._AUTHENTICATION,
})

_DURATION = re.compile(r"\b\d+(?:\.\d+)?\s*(?:ms|s)\b")
_BROKER_PREFIX = re.compile(r"^\S+/(?:bootstrap|\d+): ")
_STATE_SUFFIX = re.compile(r"(?: \(after \d+ms in state \w+\))?(?: \(\d+ identical error.*\))?$")


def reason_of(text: str) -> str:
    """The human part of a librdkafka connection message.

    ``127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)``
    gives ``Connection refused``; ``h:9092/bootstrap: Failed to resolve 'h:9092': Name or service not known (after
    1ms in state CONNECT)`` gives ``Failed to resolve 'h:9092': Name or service not known``.
    """
    text = _STATE_SUFFIX.sub("", _BROKER_PREFIX.sub("", text.strip()))
    head, sep, tail = text.partition(" failed: ")
    return tail if sep and head.startswith("Connect to") else text


class RateLimiter:
    """Admits a key at most once per window; counts what it held back. Thread-safe, bounded in keys."""

    def __init__(self, window_s: float = WINDOW_S, *, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last admitted at, suppressed since)

    def admit(self, key: str) -> tuple[bool, int]:
        """(True, n) when ``key`` may be emitted now, n being the repeats held back since it last was."""
        now = self._clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.window_s:
                self._seen[key] = (last[0], last[1] + 1)
                return False, 0
            if last is None and len(self._seen) >= self.max_keys:
                self._evict(now)
            self._seen.pop(key, None)  # re-insert: insertion order is age order, the oldest go first
            self._seen[key] = (now, 0)
            return True, last[1] if last else 0

    def _evict(self, now: float) -> None:
        expired = [k for k, (at, _) in self._seen.items() if now - at >= self.window_s]
        for k in expired or list(self._seen)[: max(1, self.max_keys // 4)]:
            del self._seen[k]


def _normalise(message: str) -> str:
    return _DURATION.sub("#", message)


class LibrdkafkaLog:
    """confluent-kafka's ``logger``: it calls ``log(level, "%s [%s] %s", facility, client, message)``."""

    def __init__(self, limiter: RateLimiter | None = None, logger: logging.Logger | None = None) -> None:
        self.limiter = limiter or RateLimiter()
        self.logger = logger or logging.getLogger(LIBRDKAFKA_LOGGER)

    def log(self, level: int, fmt: str, *args: Any, **_kwargs: Any) -> None:
        if len(args) == 3:
            facility, client, message = (str(a) for a in args)
        else:
            facility, client, message = "", "", (fmt % args if args else fmt)
        if facility in DEMOTED_FACILITIES:
            level = logging.DEBUG
        if not self.logger.isEnabledFor(level):
            return
        admitted, suppressed = self.limiter.admit(f"{level}|{facility}|{_normalise(message)}")
        if not admitted:
            return
        text = f"librdkafka {facility}: {message}"
        if suppressed:
            text += f" ({suppressed} similar line(s) suppressed in the last {self.limiter.window_s:.0f} s)"
        self.logger.log(level, "%s", text, extra={"fields": {"facility": facility, "client": client,
                                                             "suppressed": suppressed}})


class BrokerErrors:
    """confluent-kafka's ``error_cb``: one KaPoW line naming the bootstrap address, at most once per window.

    It also remembers the latest reason (``last_reason``), for callers that report it themselves, such as
    :func:`kapow.kafka.connectivity.wait_for_broker`; with ``quiet=True`` it only remembers.
    """

    def __init__(self, bootstrap: str, *, limiter: RateLimiter | None = None, logger: logging.Logger | None = None,
                 quiet: bool = False) -> None:
        self.bootstrap = bootstrap
        self.limiter = limiter or RateLimiter()
        self.logger = logger or logging.getLogger(BROKER_LOGGER)
        self.quiet = quiet
        self.last_reason: str | None = None

    def __call__(self, err: KafkaError) -> None:
        unreachable = err.code() in UNREACHABLE
        reason = reason_of(err.str()) if err.code() != KafkaError._ALL_BROKERS_DOWN else None
        if reason:
            self.last_reason = reason
        if self.quiet:
            return
        if unreachable:
            text = f"Kafka at {self.bootstrap} cannot be reached: {reason or self.last_reason or err.str()}"
            level = logging.WARNING
        else:
            text = f"Kafka at {self.bootstrap}: {err.str()}"
            level = logging.ERROR if err.fatal() else logging.WARNING
        admitted, suppressed = self.limiter.admit(text)
        if not admitted:
            return
        if suppressed:
            text += f" ({suppressed} repeat(s) in the last {self.limiter.window_s:.0f} s)"
        self.logger.log(level, "%s", text, extra={"fields": {"bootstrap": self.bootstrap, "code": err.name()}})


def client_logging(bootstrap: str, *, window_s: float = WINDOW_S, quiet: bool = False) -> dict[str, Any]:
    """The config entries every KaPoW client gets: its own rate-limited ``logger`` and ``error_cb``."""
    return {"logger": LibrdkafkaLog(RateLimiter(window_s)),
            "error_cb": BrokerErrors(bootstrap, limiter=RateLimiter(window_s), quiet=quiet)}
