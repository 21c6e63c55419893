"""Once-a-second samples of the writer's counters, turned into the rates and quantiles the console draws.

The sampler runs on the HTTP thread's event loop and reads only what the pipeline already keeps: the writer's
running totals (updated once per committed batch) and the metrics registry (end-to-end latency histogram, lag
gauges). Five minutes of samples are kept, so a console opened now shows the recent past at once.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from kapow import metrics
from kapow.http.common import json_response, only, query_int
from kapow.http.state import destinations, is_ready, state_of

OUTCOMES = ("landed", "duplicate", "filtered", "user_error", "system_error")
HISTORY_S = 300
WINDOW = 5  # samples (seconds) behind each "current" rate and each latency quantile


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # epoch seconds
    totals: dict[str, int]
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count) of the end-to-end histogram
    lag: float
    in_flight: float


def _collect(metric: Any) -> list[Any]:
    return [s for family in metric.collect() for s in family.samples]


def read_buckets() -> tuple[tuple[float, float], ...]:
    out = []
    for s in _collect(metrics.END_TO_END):
        if s.name.endswith("_bucket"):
            out.append((float(s.labels["le"]), float(s.value)))
    return tuple(sorted(out))


def total_lag() -> float:
    return sum(float(s.value) for s in _collect(metrics.LAG))


def gauge_value(metric: Any) -> float:
    samples = _collect(metric)
    return float(samples[0].value) if samples else 0.0


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding the q-th observation."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bound: the bound is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


class Stats:
    """A ring of samples and what the console needs from it (call :meth:`sample` about once a second)."""

    def __init__(self, totals: dict[str, int], history_s: int = HISTORY_S) -> None:
        self._totals = totals
        self._ring: deque[Sample] = deque(maxlen=history_s + 1)

    def sample(self, now: float | None = None) -> None:
        self._ring.append(Sample(t=time.time() if now is None else now, totals=dict(self._totals),
                                 buckets=read_buckets(), lag=total_lag(), in_flight=gauge_value(metrics.IN_FLIGHT)))

    @staticmethod
    def _rates(a: Sample, b: Sample) -> dict[str, float]:
        dt = max(b.t - a.t, 1e-3)
        return {k: max(0.0, (b.totals.get(k, 0) - a.totals.get(k, 0)) / dt) for k in OUTCOMES}

    @staticmethod
    def _error_pct(a: Sample, b: Sample) -> float | None:
        passed = (b.totals["received"] - b.totals["filtered"]) - (a.totals["received"] - a.totals["filtered"])
        failed = sum(b.totals[k] - a.totals[k] for k in ("user_error", "system_error"))
        if passed <= 0:
            return None
        return min(100.0, 100.0 * failed / passed)

    @staticmethod
    def _latency(a: Sample, b: Sample, q: float) -> float | None:
        before = dict(a.buckets)
        delta = [(bound, count - before.get(bound, 0.0)) for bound, count in b.buckets]
        return quantile(q, delta)

    def snapshot(self, seconds: int = HISTORY_S) -> dict[str, Any]:
        ring = list(self._ring)
        series: dict[str, list[Any]] = {k: [] for k in ("t", *OUTCOMES, "error_pct", "p50", "p99", "lag")}
        start = max(1, len(ring) - seconds)
        for i in range(start, len(ring)):
            a, b, w = ring[i - 1], ring[i], ring[max(0, i - WINDOW)]
            series["t"].append(round(b.t * 1000))
            for k, v in self._rates(a, b).items():
                series[k].append(round(v, 2))
            pct = self._error_pct(w, b)
            series["error_pct"].append(None if pct is None else round(pct, 3))
            for name, q in (("p50", 0.5), ("p99", 0.99)):
                value = self._latency(w, b, q)
                series[name].append(None if value is None else round(value, 5))
            series["lag"].append(b.lag)
        current: dict[str, Any] = {"packets_per_s": dict.fromkeys(OUTCOMES, 0.0), "error_pct": None,
                                   "latency_p50_s": None, "latency_p99_s": None, "lag": 0.0, "in_flight": 0.0}
        if len(ring) >= 2:
            last, back = ring[-1], ring[max(0, len(ring) - 1 - WINDOW)]
            current["packets_per_s"] = {k: round(v, 2) for k, v in self._rates(back, last).items()}
            pct = self._error_pct(back, last)
            current["error_pct"] = None if pct is None else round(pct, 3)
            for name, q in (("latency_p50_s", 0.5), ("latency_p99_s", 0.99)):
                value = self._latency(back, last, q)
                current[name] = None if value is None else round(value, 5)
        if ring:
            current["lag"] = ring[-1].lag
            current["in_flight"] = ring[-1].in_flight
        return {"series": series, "current": current}


async def api_stats(request: Request) -> Response:
    """``GET /api/stats``: what the console's overview draws."""
    only(request, "seconds")
    seconds = query_int(request, "seconds", HISTORY_S, 1, HISTORY_S)
    state = state_of(request)
    writer, k = state.writer, state.config.kafka
    body = state.stats.snapshot(seconds)
    body.update({
        "now_ms": round(time.time() * 1000), "started_at_ms": round(writer.started_at * 1000),
        "uptime_s": round(time.time() - writer.started_at, 1), "ready": is_ready(state),
        "partitions": len(writer.assigned), "totals": dict(writer.totals), "destinations": destinations(state),
        "topics": {"source": list(k.topics), "user_errors": k.user_errors_topic,
                   "system_errors": k.system_errors_topic},
        "group": k.group_id,
    })
    return json_response(body)
