"""The results as one PNG: every workload beside its COPY ceiling and the peer, and the sweep when it was run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kapow_bench.report import Run

KNOBS = (("partitions", "partitions (batch 5000, 4 connections)"),
         ("batch", "pipeline.batch_max_messages (6 partitions)"),
         ("connections", "max_connections (6 partitions, batch 5000)"),
         ("writers", "writer processes in one group (6 partitions)"))
BASE = {"partitions": 6, "batch": 5000, "connections": 4, "writers": 1}


def _thousands(v: float, _pos: int) -> str:
    return f"{v / 1000:.0f}k"


def _workloads(ax: Any, summary: list[Run]) -> None:
    rows = [r for r in summary if r["kind"] == "kapow" and r.get("clock") == "prefilled" and not r.get("sweep")]
    labels = [r["workload"] for r in rows]
    xs = list(range(len(rows)))
    ax.bar([x - 0.3 for x in xs], [r["packets_per_s"] for r in rows], 0.3, color="tab:green",
           label="KaPoW, process start → last row")
    ax.bar(xs, [r["steady_packets_per_s"] for r in rows], 0.3, color="tab:blue", label="KaPoW, steady")
    peers = {r["workload"]: r for r in summary if r["kind"] == "peer"}
    ax.bar([x + 0.3 for x in xs], [peers[w]["steady_packets_per_s"] if w in peers else 0 for w in labels], 0.3,
           color="tab:orange", label="Connect + Debezium JDBC sink, steady")
    ceilings = [r.get("ceiling_packets_per_s") for r in rows]
    ax.scatter([x for x, c in zip(xs, ceilings, strict=True) if c], [c for c in ceilings if c], marker="_", s=400,
               color="black", label="COPY ceiling, same data, same run")
    ax.set_yscale("log")
    ax.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("packets landed per second (log)")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3, axis="y")


def _sweep(axes: Any, summary: list[Run]) -> None:
    import matplotlib.ticker

    sweep = [r for r in summary if r["kind"] == "kapow" and r.get("sweep")]
    for ax, (knob, label) in zip(axes, KNOBS, strict=True):
        points = sorted((r for r in sweep if all(r.get(k) == v for k, v in BASE.items() if k != knob)),
                        key=lambda r: r[knob])
        xs = [r[knob] for r in points]
        ax.plot(xs, [r["steady_packets_per_s"] for r in points], "o-", color="tab:blue", label="steady")
        ax.plot(xs, [r["packets_per_s"] for r in points], "s--", color="tab:green", label="incl. start-up")
        ax.fill_between(xs, [r["min_packets_per_s"] for r in points], [r["max_packets_per_s"] for r in points],
                        color="tab:green", alpha=0.12, label="min-max, incl. start-up")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(label, fontsize=8)
        ax.axhline(150_000, color="tab:red", lw=1, ls=":", label="target 150k/s")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_thousands))
    axes[0].set_ylabel("250 B packets per second")
    axes[0].legend(loc="lower right", fontsize=7)


def plot(summary: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_sweep = any(r.get("sweep") for r in summary)
    fig = plt.figure(figsize=(17, 9.5 if has_sweep else 5.5))
    grid = fig.add_gridspec(2 if has_sweep else 1, 4)
    _workloads(fig.add_subplot(grid[0, :]), summary)
    if has_sweep:
        _sweep([fig.add_subplot(grid[1, i]) for i in range(4)], summary)
    runs = max((r["runs"] for r in summary), default=0)
    fig.suptitle(f"KaPoW on one machine shared with the broker and PostgreSQL: median of {runs} runs per point",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m kapow_bench.plot RESULTS.json OUT.png``: redraw from a saved result, without re-measuring."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m kapow_bench.plot RESULTS.json OUT.png", file=sys.stderr)
        return 2
    plot(json.loads(Path(args[0]).read_text())["summary"], Path(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
