"""docs/ARCHITECTURE.md's rooms and what each may import, checked against the code: no circle, no arrow back up.

The table below is the one in ARCHITECTURE.md ("The rooms"); a new import that breaks it fails here, so the
picture and the code cannot drift apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "kapow"
BASE = {"errors", "metrics", "logs", "bytecache", "config", "credentials", "contract"}
# room -> the rooms it may import (besides itself); "kapow" is the package's own __init__ (its version)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "metrics": set(),
    "logs": set(),
    "bytecache": set(),
    "keyshapes": set(),
    "config": {"errors", "credentials"},  # config and credentials are one room, split for size
    "credentials": {"errors", "config"},
    "contract": {"errors", "bytecache", "keyshapes"},
    "formats": {"errors", "contract"},
    "postgres": BASE - {"metrics", "logs"},
    "kafka": {"errors", "config", "credentials"},
    "deadletter": BASE | {"kafka"},
    "pipeline": BASE | {"formats", "postgres", "kafka", "deadletter"},
    "audit": BASE | {"postgres", "kafka", "deadletter", "pipeline", "formats"},
    "http": BASE | {"deadletter", "audit"},
    "client": {"errors", "contract", "kafka"},
    "health": BASE | {"kafka", "postgres", "pipeline"},
    "demo": BASE | {"client", "kafka"},
    "configdoc": {"config", "credentials"},
    "cli": BASE | {"kafka", "postgres", "pipeline", "deadletter", "audit", "http", "client", "health", "demo",
                   "formats", "configdoc", "kapow"},
    "__main__": {"cli"},
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kapow"


def _imports() -> list[tuple[str, str, str]]:
    """(importing room, imported room, file) for every ``kapow`` import in src/."""
    found = []
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        room = parts[0] if len(parts) > 1 or parts[0] != "__init__" else "kapow"
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("kapow.") or name == "kapow":
                    target = _room(name)
                    if target == "kapow" and isinstance(node, ast.ImportFrom):  # from kapow import metrics
                        for alias in node.names:
                            found.append((room, alias.name, str(path.relative_to(SRC))))
                    else:
                        found.append((room, target, str(path.relative_to(SRC))))
    return found


def test_every_room_is_in_the_table() -> None:
    rooms = {p.with_suffix("").name if p.is_file() else p.name for p in SRC.iterdir()
             if not p.name.startswith(("_", ".")) or p.name == "__main__.py"} - {"py", "console"}
    rooms = {r for r in rooms if (SRC / r).is_dir() or (SRC / f"{r}.py").is_file()}
    assert rooms <= set(ALLOWED) | {"bench"}, f"rooms missing from the table: {sorted(rooms - set(ALLOWED))}"


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_no_room_imports_what_it_may_not(room: str) -> None:
    wrong = sorted({(target, file) for r, target, file in _imports()
                    if r == room and target != room and target not in ALLOWED[room] | {"__version__"}})
    assert not wrong, f"{room} imports {wrong}: not allowed by docs/ARCHITECTURE.md"


def test_the_runtime_never_imports_the_benchmark() -> None:
    offenders = sorted(file for _r, _t, file in _imports() if "kapow_bench" in file)
    assert not offenders
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if "kapow_bench" in text:
            assert path.name == "bench.py" and path.parent.name == "cli", f"{path} imports the benchmark"
