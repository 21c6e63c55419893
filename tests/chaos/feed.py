"""The chaos load: packets with unique ids, ~1 % of them poison, published at a steady pace from its own process.

``python -m tests.chaos.feed --bootstrap B --topic T --start 0 --count N --rate R --dest JSON [--dest JSON]``

Packet ``i`` goes to destination ``i % len(dests)``, keyed ``str(i)`` (so error records, which keep the key,
name their id). Poison packets (``is_poison(i)``) carry a value the ``amount numeric`` column rejects: half of
them a JSON object (refused by sort), half a string PostgreSQL cannot cast (refused by the database, so the
writer must isolate the bad row inside a batch). Exits non-zero if Kafka did not acknowledge every packet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from kapow.client import Publisher
from kapow.contract import make_packet

POISON_MOD = 97  # ~1 %


def is_poison(i: int) -> bool:
    return i % POISON_MOD == 13


def row(i: int) -> dict[str, Any]:
    amount: Any = f"{i % 1000}.{i % 100:02d}"
    if is_poison(i):
        amount = {"not": "a number"} if (i // POISON_MOD) % 2 else "not-a-number"
    return {"id": i, "account": f"acct-{i % 50}", "amount": amount, "at": "2026-11-24T10:00:00Z"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True, help="packets per second")
    ap.add_argument("--dest", action="append", required=True, help="destination JSON; repeat to round-robin")
    args = ap.parse_args(argv)
    dests: list[dict[str, str]] = [json.loads(d) for d in args.dest]
    tick = 0.05
    per_tick = max(1, round(args.rate * tick))
    started = time.monotonic()
    sent = 0
    # generous timeouts: a leader election in the three-broker test must delay, never fail, a packet
    with Publisher(args.bootstrap, args.topic, settings={"message.timeout.ms": 120000, "log_level": 3}) as pub:
        for i in range(args.start, args.start + args.count):
            pub.send_raw(make_packet([dests[i % len(dests)]], row(i)), str(i).encode())
            sent += 1
            if sent % per_tick == 0:
                pub._producer.poll(0)
                ahead = started + (sent / per_tick) * tick - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        pub.flush(180)
    print(f"published {sent} packets in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
