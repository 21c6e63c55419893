"""docs/CONFIG.md is complete and current: every config key and KAPOW_* variable has a meaning, and the file is
exactly what ``python -m kapow.configdoc`` writes (``make docs`` regenerates it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from kapow import configdoc
from kapow.config import Config


def test_every_key_and_variable_has_a_meaning() -> None:
    assert configdoc.problems() == []


def test_config_md_is_what_the_generator_writes() -> None:
    assert configdoc.DOC.read_text(encoding="utf-8") == configdoc.render(), (
        "docs/CONFIG.md is out of date: run make docs (python -m kapow.configdoc)")


def test_every_key_of_the_structs_appears_in_the_document() -> None:
    text = configdoc.DOC.read_text(encoding="utf-8")
    for key in configdoc.config_keys():
        name = key.rsplit(".", 1)[-1]
        assert f"| `{name}` |" in text or f"`[{key}]`" in text or f"`[[{key.rstrip('[]')}]]`" in text, key


class _Knobs(msgspec.Struct, kw_only=True):
    knob: int = 1


class _Grown(Config, kw_only=True):
    knobs: _Knobs = msgspec.field(default_factory=_Knobs)


def test_a_new_key_without_a_meaning_is_reported() -> None:
    found = configdoc.problems(struct=_Grown)
    assert "config key knobs has no meaning in kapow.configdoc.KEYS" in found
    assert "config key knobs.knob has no meaning in kapow.configdoc.KEYS" in found


def test_a_new_environment_variable_is_reported(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    new = "KAPOW_" + "BRAND_NEW_KNOB"  # spelled in two halves, or the scan of tests/ would find it here
    (tmp_path / "src" / "x.py").write_text(f'os.environ.get("{new}")\nos.environ["KAPOW_BOOTSTRAP"]\n')
    found = configdoc.problems(root=tmp_path)
    assert f"environment variable {new} has no meaning in kapow.configdoc.ENVIRONMENT" in found
    assert not any("KAPOW_BOOTSTRAP has no meaning" in p for p in found)
    assert any("documents KAPOW_ADMIN_TOKEN, which nothing reads" in p for p in found)


def test_check_mode_passes_now_and_fails_on_a_stale_document(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    ok = subprocess.run([sys.executable, "-m", "kapow.configdoc", "--check"], capture_output=True, text=True,
                        check=False, timeout=60)
    assert ok.returncode == 0, ok.stderr
    stale = tmp_path / "docs" / "CONFIG.md"
    stale.parent.mkdir()
    stale.write_text(configdoc.render().replace("| `listen` |", "| `listen_on` |"))
    monkeypatch.setattr(configdoc, "ROOT", tmp_path)
    monkeypatch.setattr(configdoc, "DOC", stale)
    assert configdoc.main(["--check"]) == 1
    assert capsys.readouterr().err.strip() == "configdoc: docs/CONFIG.md is out of date: run make docs"
