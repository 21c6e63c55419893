"""Turn the chaos results (one JSON line per scenario, ``$KAPOW_CHAOS_RESULTS``) into the table of
docs/RELIABILITY.md: ``python -m tests.chaos.report /tmp/kapow-chaos-results.jsonl``."""

from __future__ import annotations

import json
import sys

TESTS = {
    "kill9": ("1. `kill -9` at random moments", "test_kill9_at_random_moments"),
    "sigterm": ("2. SIGTERM under load", "test_sigterm_under_load"),
    "rebalance": ("3. rebalance storm (≤ 3 writers)", "test_rebalance_storm"),
    "pg_restart": ("4. PostgreSQL restarted, then stopped > hold_s", "test_postgres_restarted_and_stopped"),
    "table_lock": ("5. table locked < and > hold_s", "test_destination_table_locked"),
    "broker_kill": ("6. leader broker killed (3 brokers)", "test_leader_broker_killed"),
    "tcp_faults": ("7. connections cut / refused / stalled", "test_connections_cut_and_stalled"),
    "error_topic": ("8. error topic unwritable", "test_error_topic_unwritable"),
    "sigstop": ("9. writer paused past max.poll.interval", "test_writer_paused_past_poll_interval"),
}


def main(path: str) -> None:
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    print("| scenario | faults | sent | landed | user errors (distinct ids) | parked → redriven by the writers "
          "| replayed (no-ops) | insert attempts | recovery (s) | run (s) | reproduce |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        title, test = TESTS.get(r["scenario"], (r["scenario"], r["scenario"]))
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']}"
        mode = "KAPOW_CHAOS=long " if r["mode"] == "long" else ""
        print(f"| {title} | {r['faults']} | {r['sent']:,} | {r['landed']:,} | {r['user_errors']:,} "
              f"({r['user_error_ids']:,}) | {r['parked']:,} → {r['redriven']:,} | {r['redelivered']:,} "
              f"| {r['attempted_inserts']:,} | {rec} | {r['seconds']} "
              f"| `{mode}.venv/bin/pytest tests/chaos -s -k {test}` |")

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kapow-chaos-results.jsonl")
