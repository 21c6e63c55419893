"""``kapow bench``: the benchmark, which lives in its own package (``kapow_bench``, beside the runtime package).

Nothing of it is imported until the command runs: its arguments are handed over as they are (``kapow bench
--help`` shows its own help), and when the package is not installed the command says in one line how to get it.
"""

from __future__ import annotations

import argparse
from typing import Any

from kapow.errors import KapowError


def register(sub: Any) -> None:
    # Every argument goes to the benchmark's own parser: with no prefix character of its own ("\0" is in no
    # argument) this parser takes "-n 10" as plain words, which REMAINDER alone does not in a subparser.
    bench = sub.add_parser("bench", add_help=False, prefix_chars="\0", help="measure throughput, CPU, latency, "
                           "the peer and the COPY ceiling (make bench; kapow bench --help)")
    bench.add_argument("rest", nargs="*")
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from kapow_bench.cli import main
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "kapow_bench":  # a library it needs is missing: its own message
            raise
        raise KapowError("bench: the benchmark is not installed; from a checkout: pip install -e '.[bench]'") from None

    code: int = main(args.rest, prog="kapow bench")
    return code
