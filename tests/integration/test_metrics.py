"""Issue #4: after a known stream, ``/metrics`` says exactly what happened (RED, per step, outcome and database)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from kapow.contract import make_packet
from tests.browser import harness
from tests.browser.harness import value
from tests.integration import kit
from tests.tools.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration
http_writers = harness.http_writers  # the fixture

DDL = "CREATE TABLE public.events (id bigint PRIMARY KEY, v text NOT NULL, n integer)"


def test_metrics_count_a_known_stream(make_env: Callable[..., kit.Env], http_writers: harness.Starter) -> None:
    env = make_env()
    db = env.databases[0]
    kit.sql(db, DDL)
    env.extra_destinations = [{"vanity": "vault", "host": "127.0.0.1", "port": harness.dead_port(),
                               "databases": [db], "connect_timeout_s": 1}]
    env.pipeline = {"hold_s": 0.5, "retry_initial_backoff_s": 0.05}
    port = harness.free_port()
    writer = http_writers(harness.http_config(env, port), port)
    writer.wait_ready()

    wh, vault = kit.dest(db, "events"), kit.dest(db, "events", vanity="vault")
    landed = [make_packet([wh], {"id": i, "v": f"row {i}", "n": i}) for i in range(400)]
    by_code = {
        "not_json": [b"{not json", b"\xff\xfe not even text", b"[1, 2"],  # (an array cut short is no JSON)
        "bad_packet": [b'{"data": {"id": 1}}', b"[1, 2]"],
        "unknown_destination": [make_packet([kit.dest(db, "events", vanity="nowhere")], {"id": 1, "v": "x"})],
        "unknown_column": [make_packet([wh], {"id": 10_000 + i, "v": "x", "nope": 1}) for i in range(3)],
        "bad_value": [make_packet([wh], {"id": 20_000 + i, "v": "x", "n": "eleven"}) for i in range(4)],
    }
    parked = [make_packet([vault], {"id": 30_000 + i, "v": "vault"}) for i in range(3)]
    stream = landed + [v for values in by_code.values() for v in values] + parked
    kit.publish(env.topic, stream)
    foreign = kit.publish(env.topic, [b"someone else's record"] * 7, pipeline=False)
    kit.publish(env.topic, landed[:25])  # replays: duplicates, no new rows
    sent = len(stream) + foreign + 25
    user_errors = sum(len(v) for v in by_code.values())

    def settled() -> bool:
        m = harness.metrics(writer.url)
        return (value(m, "kapow_error_records_total", topic=env.user_errors) == user_errors
                and value(m, "kapow_error_records_total", topic=env.system_errors) == len(parked)
                and value(m, "kapow_packets_total", step="persist", outcome="duplicate") == 25
                and value(m, "kapow_consumer_lag") == 0)

    kit.wait_for(settled, 90, "every packet accounted for in /metrics")
    m = harness.metrics(writer.url)
    topic = env.topic

    # filter: every record seen once; foreign traffic filtered
    assert value(m, "kapow_packets_total", topic=topic, step="filter", outcome="filtered") == foreign
    assert value(m, "kapow_packets_total", topic=topic, step="filter", outcome="passed") == len(stream) + 25
    # persist: rows landed, replays are duplicates, the dead destination's packets are system errors
    assert value(m, "kapow_packets_total", topic=topic, step="persist", outcome="landed") == len(landed)
    assert value(m, "kapow_packets_total", topic=topic, step="persist", outcome="system_error") == len(parked)
    # user errors are found by sort or persist (depending on what the catalog knew): together, all of them
    assert value(m, "kapow_packets_total", topic=topic, outcome="user_error") == user_errors
    assert value(m, "kapow_packets_total", topic=topic, step="sort", outcome="system_error") == 0

    # per destination database
    assert value(m, "kapow_rows_total", database=db, outcome="landed") == len(landed)
    assert value(m, "kapow_rows_total", database=db, outcome="duplicate") == 25
    assert kit.scalar(db, "SELECT count(*) FROM events") == len(landed)
    for code in ("unknown_column", "bad_value"):
        assert value(m, "kapow_errors_total", database=db, code=code) == len(by_code[code]), code
        assert value(m, "kapow_errors_total", database=db, code=code, **{"class": "user"}) == len(by_code[code])
    for code in ("not_json", "bad_packet"):  # before any destination is known: database "-"
        assert value(m, "kapow_errors_total", database="-", code=code, **{"class": "user"}) == len(by_code[code])
    assert value(m, "kapow_errors_total", code="unknown_destination") == 1
    assert value(m, "kapow_errors_total", database=db, code="database_unavailable",
                 **{"class": "system"}) == len(parked)
    assert value(m, "kapow_errors_total", **{"class": "user"}) == user_errors
    # and the error topics really hold them
    assert len(kit.read_all(env.user_errors, expect=user_errors)) == user_errors
    assert len(kit.read_all(env.system_errors, expect=len(parked))) == len(parked)

    # batches: every consumed record is in exactly one batch; durations and latency were observed
    assert value(m, "kapow_batch_size_sum") == sent
    assert value(m, "kapow_step_duration_seconds_count", step="persist", database=db) > 0
    assert value(m, "kapow_step_duration_seconds_count", step="sort") > 0
    assert value(m, "kapow_end_to_end_latency_seconds_count") > 0

    # gauges refreshed by the loop: lag per partition (all caught up), pools, circuits, heartbeat
    lag = {lbls: v for (name, lbls), v in m.items() if name == "kapow_consumer_lag"}
    assert len(lag) == 6 and set(lag.values()) == {0.0}
    assert value(m, "kapow_pool_connections_max", vanity="wh", database=db) == 4
    # settled: every connection goes back to the pool (the gauge is refreshed once a second)
    kit.wait_for(lambda: value(harness.metrics(writer.url), "kapow_pool_connections_in_use", vanity="wh",
                               database=db) == 0, 10, "every connection back in the pool")
    assert value(m, "kapow_circuit_state", vanity="wh", database=db) == 0
    assert value(m, "kapow_circuit_state", vanity="vault", database=db) in (1, 2)  # half-open or open
    assert value(m, "kapow_partitions_assigned") == 6
    assert time.time() - value(m, "kapow_loop_heartbeat_timestamp_seconds") < 10

    # the console's totals agree with the metrics
    stats = harness.get_json(writer.url, "/api/stats")
    assert stats["totals"]["received"] == sent
    assert stats["totals"]["landed"] == len(landed) and stats["totals"]["duplicate"] == 25
    assert stats["totals"]["user_error"] == user_errors and stats["totals"]["system_error"] == len(parked)
    assert writer.stop() == 0


def test_lag_is_measured_while_the_writer_is_behind(make_env: Callable[..., kit.Env],
                                                     http_writers: harness.Starter) -> None:
    """A stalled database holds the only in-flight batch: the loop stops consuming, lag shows the backlog; when
    the database answers again, everything lands and lag drains to 0."""
    env = make_env(partitions=2)
    db = env.databases[0]
    kit.sql(db, DDL)
    env.pipeline = {"batch_max_messages": 50, "hold_s": 120,
                    "circuit_failures_to_open": 1000, "retry_max_backoff_s": 0.5}
    with TcpProxy(kit.PG_PORT) as proxy:
        port = harness.free_port()
        text = harness.http_config(env, port).replace(f"port = {kit.PG_PORT}", f"port = {proxy.port}", 1)
        writer = http_writers(text, port)
        writer.wait_ready()
        proxy.mode = "stall"  # connections open, bytes held back: the first batch cannot finish
        kit.publish(env.topic, [make_packet([kit.dest(db, "events")], {"id": i, "v": "x"}) for i in range(2000)])
        kit.wait_for(lambda: value(harness.metrics(writer.url), "kapow_consumer_lag") >= 1900, 30,
                     "lag to show the backlog")
        proxy.mode = "forward"
        kit.wait_for(lambda: value(harness.metrics(writer.url), "kapow_consumer_lag") == 0, 90, "lag back to 0")
        assert kit.scalar(db, "SELECT count(*) FROM events") == 2000
        assert writer.stop() == 0


def test_quantile_interpolates_like_prometheus() -> None:
    from kapow.http.stats import quantile

    inf = float("inf")
    buckets = [(0.01, 0.0), (0.1, 50.0), (1.0, 100.0), (inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.25, buckets) == pytest.approx(0.055)  # halfway through the (0.01, 0.1] bucket
    assert quantile(0.99, buckets) == pytest.approx(0.982)
    assert quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) is None  # nothing observed
    assert quantile(0.99, [(0.1, 1.0), (inf, 10.0)]) == 0.1  # beyond the last finite bound: that bound


def test_dashboard_and_alerts_name_only_metrics_that_exist() -> None:
    """deploy/ must not drift from metrics.py: every kapow_* series it queries is one the writer exports."""
    import json
    import re
    from pathlib import Path

    from kapow import metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {family.name + suffix for family in metrics.REGISTRY.collect() for suffix in suffixes[family.type]}
    deploy = Path(__file__).parents[2] / "deploy"
    dashboard = json.loads((deploy / "grafana" / "kapow-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    alerts = (deploy / "prometheus" / "kapow-alerts.yml").read_text()
    named = set(re.findall(r"\bkapow_[a-z_]+", "\n".join(exprs) + alerts))
    assert len(exprs) > 15 and "alert: KapowConsumerLagGrowing" in alerts
    assert named and named <= exported, f"not exported: {sorted(named - exported)}"
