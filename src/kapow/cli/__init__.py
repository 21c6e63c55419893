"""The ``kapow`` command: one module per subcommand, assembled here.

Every error a user can cause ends as one line on stderr and a non-zero exit, never a traceback: the
subcommands raise :class:`~kapow.errors.ConfigError` (exit 2) or :class:`~kapow.errors.KapowError` (exit 1) and
:func:`main` prints them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from kapow import __version__
from kapow.cli import audit, bench, check, demo, dlq, errors, run, send
from kapow.errors import ConfigError, KapowError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if args.func not in (run.cmd_run, demo.cmd_demo):
        # a one-shot command says in its own one line that the broker cannot be reached; the clients' own
        # warning about it would be a second line (the writer, long-running, keeps them: they are its log)
        quiet = logging.getLogger("kapow.kafka")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"kapow: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KapowError as exc:
        print(f"kapow: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kapow dlq list | head`: the reader left; no traceback, and none at exit either
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kapow", description="KaPoW, the Kafka -> PostgreSQL Writer")
    p.add_argument("--version", action="version", version=f"kapow {__version__}")
    sub = p.add_subparsers(title="commands")
    for module in (run, check, send, dlq, errors, audit, bench, demo):
        module.register(sub)
    return p
