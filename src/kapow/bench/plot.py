"""The sweep as one PNG: landed packets/s against partitions, batch size, connections and writer processes."""

from __future__ import annotations

from pathlib import Path

from kapow.bench.report import Run

KNOBS = (("partitions", "partitions (batch 5000, 4 connections)"),
         ("batch", "pipeline.batch_max_messages (6 partitions)"),
         ("connections", "max_connections (6 partitions, batch 5000)"),
         ("writers", "writer processes in one group (6 partitions)"))
BASE = {"partitions": 6, "batch": 5000, "connections": 4, "writers": 1}


def plot(summary: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sweep = [r for r in summary if r["kind"] == "kapow" and r.get("mode") == "prefilled" and r.get("sweep")]
    ceiling = max((r["packets_per_s"] for r in summary if str(r["kind"]).startswith("copy-ceiling")
                   and r.get("preset") == "250b"), default=None)
    peer = next((r["steady_packets_per_s"] for r in summary if r["kind"] == "peer"), None)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6), sharey=True)
    for ax, (knob, label) in zip(axes, KNOBS, strict=True):
        points = sorted((r for r in sweep if all(r.get(k) == v for k, v in BASE.items() if k != knob)),
                        key=lambda r: r[knob])
        xs = [r[knob] for r in points]
        steady = [r["steady_packets_per_s"] for r in points]
        whole = [r["packets_per_s"] for r in points]
        ax.plot(xs, steady, "o-", color="tab:blue", label="steady (first to last row)")
        ax.plot(xs, whole, "s--", color="tab:green", label="incl. start-up (spawn to last row)")
        lows = [r["min_packets_per_s"] for r in points]
        highs = [r["max_packets_per_s"] for r in points]
        ax.fill_between(xs, lows, highs, color="tab:green", alpha=0.12, label="min-max, incl. start-up")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(label)
        ax.axhline(50_000, color="tab:red", lw=1, ls=":", label="target 50k/s")
        if peer:
            ax.axhline(peer, color="tab:orange", lw=1, ls="--", label="Connect+Debezium (steady)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("250-byte packets landed per second")
    axes[0].set_ylim(0, 1.15 * max([r["steady_packets_per_s"] for r in sweep] + [60_000]))
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v / 1000:.0f}k"))
    axes[0].legend(loc="lower right", fontsize=7)
    n = next((r["packets"] for r in sweep), 0)
    runs = next((r["runs"] for r in sweep), 0)
    top = f"; plain COPY of the same rows, no Kafka: {ceiling:,.0f}/s (off the chart)" if ceiling else ""
    fig.suptitle(f"KaPoW on one 2-core machine with the broker and PostgreSQL: {n:,} pre-published 250-byte "
                 f"packets, median of {runs} runs{top}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m kapow.bench.plot RESULTS.json OUT.png``: redraw from a saved result, without re-measuring."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m kapow.bench.plot RESULTS.json OUT.png", file=sys.stderr)
        return 2
    result = json.loads(Path(args[0]).read_text())
    plot(result["summary"], Path(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
