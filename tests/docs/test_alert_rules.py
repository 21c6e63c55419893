"""deploy/prometheus/kapow-alerts.yml is valid for Prometheus, and its unit tests (kapow-alerts.test.yml) pass:
a dead writer fires KapowWriterDown (``up == 0``) and KapowHeartbeatAbsent, a healthy one fires nothing.

promtool comes with Debian's ``prometheus`` package (``make promtool``, part of ``make test``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: run make promtool (Debian's prometheus package)", pytrace=False)
    return found


def test_rules_are_valid() -> None:
    proc = subprocess.run([promtool(), "check", "rules", "kapow-alerts.yml"], cwd=RULES, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_dead_writer_fires_and_a_live_one_does_not() -> None:
    proc = subprocess.run([promtool(), "test", "rules", "kapow-alerts.test.yml"], cwd=RULES, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    rules = (RULES / "kapow-alerts.yml").read_text()
    assert 'expr: up{job=~"kapow.*"} == 0' in rules
    (tmp_path / "kapow-alerts.yml").write_text(rules.replace('expr: up{job=~"kapow.*"} == 0',
                                                             'expr: up{job=~"kapow.*"} == 2'))
    shutil.copy(RULES / "kapow-alerts.test.yml", tmp_path)
    proc = subprocess.run([promtool(), "test", "rules", "kapow-alerts.test.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != 0
