"""The examples of a Markdown document: every fenced ``bash``/``sh``/``shell``/``python`` block, in order.

A block that cannot run as pasted (a transcript, a command that needs your own data) is preceded by an HTML
comment that says so and why, which readers do not see:

    <!-- example: skip (a transcript of a refusal, with its output) -->

Blocks in other languages (``json``, ``toml``, ``promql``, none) are text, not examples.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RUNNABLE = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python", "py": "python"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_SKIP = re.compile(r"<!--\s*example:\s*skip\s*\((?P<why>[^)]+)\)\s*-->")


@dataclass(frozen=True)
class Example:
    path: Path
    line: int  # of the opening fence, 1-based
    kind: str  # "shell" or "python"
    code: str
    skip: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def extract(path: Path) -> list[Example]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Example] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1).lower()
        end = start + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = _SKIP.search(previous)
        if lang in RUNNABLE:
            out.append(Example(path, start + 1, RUNNABLE[lang], "\n".join(lines[start + 1:end]) + "\n",
                               skip.group("why") if skip else None))
        i = end + 1
    return out


def substitute(code: str, names: Mapping[str, str]) -> str:
    for old, new in names.items():
        code = code.replace(old, new)
    return code


def run(example: Example, *, cwd: Path, env: Mapping[str, str], names: Mapping[str, str],
        timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    """Run one example as pasted (but for ``names``), shell examples under ``set -euo pipefail``."""
    code = substitute(example.code, names)
    argv = ([sys.executable, "-c", code] if example.kind == "python"
            else ["bash", "-c", "set -euo pipefail\n" + code])
    return subprocess.run(argv, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout,
                          check=False)
