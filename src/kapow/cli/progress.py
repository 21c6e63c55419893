"""A one-line progress bar on stderr for long CLI operations (only when stderr is a terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress_bar(verb: str) -> Callable[[int, int], None]:
    show = sys.stderr.isatty()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if show and (now - last[0] > 0.2 or done == total):
            width = 30
            filled = width * done // max(total, 1)
            print(f"\r{verb} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)
            last[0] = now

    return progress
