"""``python -m kapow_bench`` (and ``kapow bench``, which hands its arguments here): parse, run, one line on error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kapow.errors import KapowError


def build_parser(prog: str = "python -m kapow_bench") -> argparse.ArgumentParser:
    from kapow_bench.options import add_arguments

    p = argparse.ArgumentParser(prog=prog, description="Measure KaPoW against the COPY ceiling, its peer and its "
                                "targets (docs/BENCHMARKS.md); make bench runs --all.")
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m kapow_bench") -> int:
    args = build_parser(prog).parse_args(argv)
    from kapow_bench.suite import main_bench

    try:
        return main_bench(args)
    except KapowError as exc:
        print(f"kapow bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
