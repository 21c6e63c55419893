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
KEY_FIELDS = ("kind", "workload", "clock", "packets", "partitions", "batch", "connections", "writers", "rate",
              "sweep")


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


def relate(summary: list[Run]) -> list[Run]:
    """Add the ratios the targets are written in: spread vs one table, KaPoW vs the peer, upsert vs insert."""
    def find(**want: Any) -> Run | None:
        return next((r for r in summary if all(r.get(k) == v for k, v in want.items())), None)

    for r in summary:
        if r["kind"] != "kapow" or r.get("sweep") or "packets_per_s" not in r:
            continue
        same = {"clock": r.get("clock"), "packets": r.get("packets"), "partitions": r.get("partitions")}
        refs: list[tuple[str, Run | None]] = [("peer", find(kind="peer", workload=r["workload"], **same))]
        if r.get("tables", 1) > 1:
            refs.append(("one_table", find(kind="kapow", mode=r["mode"], route=r.get("route"), size=r["size"],
                                           tables=1, version=r.get("version"), **same)))
        if r.get("mode") == "upsert" and r.get("route") is None:
            refs.append(("insert", find(kind="kapow", mode="insert", route=None, size=r["size"],
                                        tables=r.get("tables"), **same)))
        for name, ref in refs:
            if ref is not None and ref is not r and ref.get("packets_per_s"):
                r[f"vs_{name}"] = round(r["packets_per_s"] / ref["packets_per_s"], 3)
                if ref.get("steady_packets_per_s"):
                    r[f"steady_vs_{name}"] = round(r["steady_packets_per_s"] / ref["steady_packets_per_s"], 3)
    return summary


def _what(r: Run) -> str:
    """The workload's label; for a sweep point, with the knobs it varies (P partitions, b batch, c connections,
    w writer processes)."""
    label = str(r.get("workload", ""))
    if r.get("sweep"):
        label += f" P{r.get('partitions')} b{r.get('batch')} c{r.get('connections')} w{r.get('writers')}"
    return label


def _num(r: Run, name: str, fmt: str = ",.0f") -> str:
    v = r.get(name)
    return "-" if v is None else format(v, fmt)


def table(summary: list[Run]) -> str:
    """The medians as a fixed-width text table (the JSON has everything)."""
    head = (f"{'writer':<11} {'workload':<30} {'clock':<9} {'N':>8} {'runs':>4} {'packets/s':>10} {'steady':>10} "
            f"{'ceiling':>10} {'st/ceil':>7} {'us/pkt':>7} {'w/pg/kafka us':>17} {'rss MiB':>7} {'load':>5} exact")
    lines = [head, "-" * len(head)]
    for r in summary:
        if r["kind"] == "latency":
            continue
        parts = "/".join(_num(r, f, ".1f") for f in ("cpu_us_per_packet", "cpu_pg_us_per_packet",
                                                        "cpu_broker_us_per_packet"))
        lines.append(
            f"{r['kind']:<11} {_what(r):<30} {r.get('clock', ''):<9} {r.get('packets', 0):>8} "
            f"{r['runs']:>4} {_num(r, 'packets_per_s'):>10} {_num(r, 'steady_packets_per_s'):>10} "
            f"{_num(r, 'ceiling_packets_per_s'):>10} {_num(r, 'steady_over_ceiling', '.2f'):>7} "
            f"{_num(r, 'cpu_total_us_per_packet', '.1f'):>7} {parts:>17} {_num(r, 'peak_rss_mib'):>7} "
            f"{_num(r, 'load_before', '.2f'):>5} {'yes' if r.get('exact') else 'NO'}")
    for r in summary:
        if r["kind"] == "latency":
            lines.append(
                f"latency {r.get('workload', '')} at {r['rate']:,.0f}/s for {r['duration']:.0f} s ({r['runs']} runs, "
                f"medians): p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                f"max {r['max_ms']:.1f} ms (record timestamp -> row inserted); visible by poll: "
                f"p50 {_num(r, 'visible_p50_ms', '.1f')} ms, p99 {_num(r, 'visible_p99_ms', '.1f')} ms; "
                f"load {r['load_before']:.2f}")
    return "\n".join(lines)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[i]


def markdown(summary: list[Run]) -> str:
    """The medians as the Markdown tables of docs/BENCHMARKS.md, so the document is pasted, not retyped."""
    out = ["| writer | workload | clock | N | runs | packets/s (min-max) | steady | COPY ceiling | steady / ceiling "
           "| µs CPU/packet: total (writer / PostgreSQL / broker) | peak RSS MiB | load before | exact |",
           "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in summary:
        if r["kind"] == "latency":
            continue
        rate = (f"**{r['packets_per_s']:,.0f}** ({r['min_packets_per_s']:,.0f}-{r['max_packets_per_s']:,.0f})"
                if "packets_per_s" in r else "-")
        cpu = (f"{_num(r, 'cpu_total_us_per_packet', '.1f')} ({_num(r, 'cpu_us_per_packet', '.1f')} / "
               f"{_num(r, 'cpu_pg_us_per_packet', '.1f')} / {_num(r, 'cpu_broker_us_per_packet', '.1f')})")
        out.append(f"| {r['kind']} | {_what(r)} | {r.get('clock', '')} | {r.get('packets', 0):,} | "
                   f"{r['runs']} | {rate} | {_num(r, 'steady_packets_per_s')} | {_num(r, 'ceiling_packets_per_s')} | "
                   f"{_num(r, 'steady_over_ceiling', '.2f')} | {cpu} | {_num(r, 'peak_rss_mib')} | "
                   f"{_num(r, 'load_before', '.2f')} | {'yes' if r.get('exact') else 'NO'} |")
    lat = [r for r in summary if r["kind"] == "latency"]
    if lat:
        out += ["", "| workload | rate | seconds | runs | p50 ms | p95 ms | p99 ms | max ms | visible p50 ms "
                "| visible p99 ms | load before |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for r in lat:
            out.append(f"| {r.get('workload', '')} | {r['rate']:,.0f}/s | {r['duration']:.0f} | {r['runs']} | "
                       f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | **{r['p99_ms']:.1f}** | {r['max_ms']:.1f} | "
                       f"{_num(r, 'visible_p50_ms', '.1f')} | {_num(r, 'visible_p99_ms', '.1f')} | "
                       f"{r['load_before']:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m kapow_bench.report RESULTS.json``: the Markdown tables of a saved result."""
    import json
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kapow_bench.report RESULTS.json", file=sys.stderr)
        return 2
    print(markdown(json.loads(Path(args[0]).read_text())["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
