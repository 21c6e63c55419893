"""The speed guard of ``make test``: ratios measured in the same test, never absolute times.

A shared 2-core machine cannot hold an absolute rate from one run to the next, but two measurements taken seconds
apart on it mostly move together. So each test lands real packets with the real writer process and divides by a
reference measured in the same test:

* KaPoW's steady rate (first to last row) over the COPY ceiling of the same rows into the same table (2 connections),
  100,000 packets of 250 B;
* the rate with the traffic spread over 100 tables in 4 databases over the rate into one table, 50,000 each (the
  cliff of issue 16: one transaction per table per batch fell to 3 % of the one-table rate at 1,000 tables).

Thresholds are set from what was measured here, with slack for a busy machine (docs/BENCHMARKS.md, "The regression
guard"): steady/ceiling measured 0.26-0.42 on 2026-11-27 (idle, or beside one or two busy loops; 0.12-0.23 before
issue 14's work), guarded at 0.12; spread/one table measured 0.43-0.81 (steady), guarded at 0.30. A ratio under its
threshold is measured once more before it fails, so one burst of foreign load cannot fail the suite while a real
regression (which fails both) still does. Raise the thresholds when the writer gets faster: about half of the lowest
ratio seen on a busy machine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kapow_bench.report import Run
from kapow_bench.runs import run_kapow
from kapow_bench.spec import Spec

pytestmark = [pytest.mark.integration, pytest.mark.perf]

STEADY_OVER_CEILING = 0.12
SPREAD_OVER_ONE_TABLE = 0.30
KNOBS = {"partitions": 6, "batch": 5000, "connections": 4, "writers": 1}


def measure_twice(ratio: Callable[[], tuple[float, str]], threshold: float) -> tuple[float, str]:
    """The ratio, measured again once if it is under the threshold (the better of the two counts)."""
    value, detail = ratio()
    if value < threshold:
        again, detail_again = ratio()
        if again > value:
            value, detail = again, detail_again
    return value, detail


def land(spec: Spec, n: int, tmp_path: Path, *, ceiling: int) -> Run:
    run = run_kapow(spec, clock="prefilled", n=n, run_no=1, workdir=tmp_path, ceiling_connections=ceiling, **KNOBS)
    assert run["exact"], run  # a fast wrong answer is no answer
    return run


def test_steady_rate_over_the_copy_ceiling(services: None, tmp_path: Path) -> None:
    def ratio() -> tuple[float, str]:
        run = land(Spec(), 100_000, tmp_path, ceiling=2)
        return run["steady_over_ceiling"], (f"steady {run['steady_packets_per_s']:,.0f}/s, COPY ceiling "
                                            f"{run['ceiling_packets_per_s']:,.0f}/s, load {run['load_before']}")

    value, detail = measure_twice(ratio, STEADY_OVER_CEILING)
    assert value >= STEADY_OVER_CEILING, f"KaPoW at {value:.3f} of the COPY ceiling ({detail})"


def test_spread_over_100_tables_in_4_databases_keeps_the_one_table_rate(services: None, tmp_path: Path) -> None:
    def ratio() -> tuple[float, str]:
        one = land(Spec(), 50_000, tmp_path, ceiling=0)
        spread = land(Spec(tables=100, databases=4), 50_000, tmp_path, ceiling=0)
        return (spread["steady_packets_per_s"] / one["steady_packets_per_s"],
                f"spread {spread['steady_packets_per_s']:,.0f}/s, one table {one['steady_packets_per_s']:,.0f}/s, "
                f"load {one['load_before']}")

    value, detail = measure_twice(ratio, SPREAD_OVER_ONE_TABLE)
    assert value >= SPREAD_OVER_ONE_TABLE, f"spread at {value:.3f} of the one-table rate ({detail})"
