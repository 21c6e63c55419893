"""Progress on stderr, the machine's description, medians, and the results as a table and as JSON.

A number is only worth keeping with what produced it: every run carries the load average before and after it,
and the report carries the machine, the versions and the command line.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable
from typing import Any

Run = dict[str, Any]

# The fields that say which measurement a run repeats; the median is taken over runs that agree on all of them.
KEY_FIELDS = ("kind", "mode", "preset", "packets", "partitions", "batch", "connections", "writers")


class Progress:
    """A one-line bar on stderr, redrawn at most 5 times a second; silent when stderr is not a terminal."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = max(total, 1)
        self.show = sys.stderr.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def __call__(self, done: int, total: int | None = None) -> None:
        if total:
            self.total = max(total, 1)
        now = time.monotonic()
        if not self.show or (now - self._last < 0.2 and done < self.total):
            return
        self._last = now
        width = 30
        filled = min(width, width * done // self.total)
        rate = done / max(now - self._started, 1e-9)
        print(f"\r  {self.label:<28} [{'#' * filled}{'.' * (width - filled)}] {done:>9,}/{self.total:,}"
              f"  {rate:>9,.0f}/s", end="", file=sys.stderr, flush=True)

    def done(self, note: str = "") -> None:
        if self.show:
            print(f"\r\033[K  {self.label:<28} {note}", file=sys.stderr, flush=True)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load() -> float:
    """The 1-minute load average: with 2 cores, anything above ~2 means someone else wanted them too."""
    return round(os.getloadavg()[0], 2)


def machine(pg_version: str) -> dict[str, Any]:
    import confluent_kafka
    import msgspec
    import psycopg

    mem_kib = 0
    model = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "nproc": os.cpu_count(), "cpu": model, "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "kafka": "4.3.1 (KRaft, one broker)", "postgresql": pg_version,
        "confluent_kafka": confluent_kafka.version()[0], "librdkafka": confluent_kafka.libversion()[0],
        "psycopg": psycopg.__version__, "msgspec": msgspec.__version__,
        "loadavg_at_start": list(os.getloadavg()),
    }


def summarise(runs: Iterable[Run]) -> list[Run]:
    """One row per measured configuration: the median of each number over its runs, and how many runs."""
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(tuple(r.get(k) for k in KEY_FIELDS), []).append(r)
    out: list[Run] = []
    for key, rs in groups.items():
        row: Run = {k: v for k, v in zip(KEY_FIELDS, key, strict=True) if v is not None}
        row["runs"] = len(rs)
        for name in rs[0]:
            if name in KEY_FIELDS or name == "run":
                continue
            values = [r[name] for r in rs if isinstance(r.get(name), int | float) and not isinstance(r[name], bool)]
            if len(values) == len(rs):
                row[name] = round(statistics.median(values), 3)
            elif all(r.get(name) == rs[0][name] for r in rs):  # labels (sweep, versions) that all runs share
                row[name] = rs[0][name]
        if "packets_per_s" in row:
            row["min_packets_per_s"] = min(r["packets_per_s"] for r in rs)
            row["max_packets_per_s"] = max(r["packets_per_s"] for r in rs)
        row["exact"] = all(r.get("exact", True) for r in rs)
        out.append(row)
    return out


def table(summary: list[Run]) -> str:
    """The medians as a fixed-width text table (the JSON has everything)."""
    head = (f"{'what':<22} {'mode':<10} {'preset':<6} {'N':>8} {'P':>3} {'batch':>6} {'conn':>4} {'proc':>4} "
            f"{'runs':>4} {'packets/s':>11} {'per minute':>12} {'cpu s':>7} {'rss MiB':>8} {'load':>5}  exact")
    lines = [head, "-" * len(head)]
    for r in summary:
        if r["kind"] == "latency":
            continue
        lines.append(
            f"{r['kind']:<22} {r.get('mode', ''):<10} {r.get('preset', ''):<6} {r.get('packets', 0):>8} "
            f"{r.get('partitions', ''):>3} {r.get('batch', ''):>6} {r.get('connections', ''):>4} "
            f"{r.get('writers', ''):>4} {r['runs']:>4} {r.get('packets_per_s', 0):>11,.0f} "
            f"{r.get('packets_per_s', 0) * 60:>12,.0f} {r.get('cpu_seconds', float('nan')):>7.2f} "
            f"{r.get('peak_rss_mib', float('nan')):>8.1f} {r.get('load_before', float('nan')):>5.2f}  "
            f"{'yes' if r.get('exact') else 'NO'}")
    for r in summary:
        if r["kind"] == "latency":
            lines.append(
                f"latency at {r['rate']:,.0f}/s for {r['duration']:.0f} s ({r['runs']} runs, medians): "
                f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                f"max {r['max_ms']:.1f} ms (record timestamp -> row inserted); visible by poll: "
                f"p50 {r['visible_p50_ms']:.1f} ms, p99 {r['visible_p99_ms']:.1f} ms; load {r['load_before']:.2f}")
    return "\n".join(lines)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


def markdown(summary: list[Run]) -> str:
    """The medians as the Markdown tables of docs/BENCHMARKS.md, so the document is pasted, not retyped."""
    out = ["| writer | mode | preset | N | partitions | batch | conns | procs | runs | packets/s (min-max) "
           "| per minute | steady packets/s | writer CPU s | µs CPU/packet | peak RSS MiB | load before |",
           "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in summary:
        if r["kind"] == "latency":
            continue
        rate = f"**{r['packets_per_s']:,.0f}** ({r['min_packets_per_s']:,.0f}-{r['max_packets_per_s']:,.0f})"
        steady = f"{r['steady_packets_per_s']:,.0f}" if "steady_packets_per_s" in r else "-"
        cpu = f"{r['cpu_seconds']:.2f}" if "cpu_seconds" in r else "-"
        us = f"{r['cpu_us_per_packet']:.1f}" if "cpu_us_per_packet" in r else "-"
        rss = f"{r['peak_rss_mib']:,.0f}" if "peak_rss_mib" in r else "-"
        out.append(f"| {r['kind']} | {r.get('mode', '')} | {r.get('preset', '')} | {r.get('packets', 0):,} | "
                   f"{r.get('partitions', '-')} | {r.get('batch', '-')} | {r.get('connections', '-')} | "
                   f"{r.get('writers', '-')} | {r['runs']} | {rate} | {r['packets_per_s'] * 60:,.0f} | {steady} | "
                   f"{cpu} | {us} | {rss} | {r.get('load_before', 0):.2f} |")
    lat = [r for r in summary if r["kind"] == "latency"]
    if lat:
        out += ["", "| rate | seconds | runs | p50 ms | p95 ms | p99 ms | max ms | visible p50 ms | visible p99 ms "
                "| load before |", "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for r in lat:
            out.append(f"| {r['rate']:,.0f}/s | {r['duration']:.0f} | {r['runs']} | {r['p50_ms']:.1f} | "
                       f"{r['p95_ms']:.1f} | **{r['p99_ms']:.1f}** | {r['max_ms']:.1f} | {r['visible_p50_ms']:.1f} | "
                       f"{r['visible_p99_ms']:.1f} | {r['load_before']:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    import json
    from pathlib import Path

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m kapow.bench.report RESULTS.json")
    print(markdown(json.loads(Path(sys.argv[1]).read_text())["summary"]))
