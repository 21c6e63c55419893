"""Issue #4: the web console, in a real browser, against a real writer, broker and database.

One story, start to end: the console loads; its charts move while packets flow; three packets for a dead
destination park on the system-errors topic and show up; the writer comes back with that destination alive; one
record is rescheduled from the console and its row lands, another is purged; both states hold after a page reload
and after a writer restart.

With ``KAPOW_CONSOLE_SCREENSHOT=path`` the overview is also saved there (``docs/console.png`` is made this way;
``KAPOW_CONSOLE_WARMUP_S`` streams longer first, so that the charts have a history).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from kapow.client import Publisher
from kapow.contract import make_packet
from tests.browser import harness
from tests.integration import kit

pytestmark = pytest.mark.integration

DDL = "CREATE TABLE public.events (id bigint PRIMARY KEY, v text NOT NULL)"


class Stream(threading.Thread):
    """Publishes a steady stream (about ``rate``/s): good rows, a few bad ones, some foreign traffic."""

    def __init__(self, topic: str, db: str, rate: int = 80) -> None:
        super().__init__(daemon=True)
        self.topic, self.db, self.rate = topic, db, rate
        self.halt = threading.Event()
        self.sent = 0

    def run(self) -> None:
        good = kit.dest(self.db, "events")
        with Publisher(kit.BOOTSTRAP, self.topic) as pub:
            i = 0
            while not self.halt.is_set():
                for _ in range(self.rate // 10):
                    if i % 40 == 5:  # a user error: a column the table does not have
                        pub.send_raw(make_packet([good], {"id": i, "v": "x", "colour": "red"}), str(i).encode())
                    else:
                        pub.send_raw(make_packet([good], {"id": i, "v": f"row {i}"}), str(i).encode(),
                                     pipeline=i % 25 != 3)
                    i += 1
                self.sent = i
                self.halt.wait(0.1)


def dlq_ids(page: Any) -> list[str]:
    ids: list[str] = page.eval_on_selector_all("#dlq-table tbody tr", "rows => rows.map(r => r.dataset.id)")
    return ids


def chart_state(page: Any, chart: str) -> dict[str, Any]:
    state: dict[str, Any] = page.eval_on_selector(
        f"#chart-{chart}",
        "c => ({version: +c.dataset.version || 0, points: +c.dataset.points || 0,"
        " last: JSON.parse(c.dataset.last || '{}'), image: c.toDataURL()})")
    return state


def consumed_to_the_end(env: kit.Env) -> bool:
    """The group has committed past the last record of every partition (a transaction's end marker, written by a
    reschedule, is never consumed: the end offset itself cannot be the test)."""
    last: dict[int, int] = {}
    for r in kit.read_all(env.topic):
        last[r.partition] = max(last.get(r.partition, -1), r.offset)
    committed = kit.committed_offsets(env.group, env.topic)
    return all(committed.get(p, -1) > offset for p, offset in last.items())


def open_dlq(page: Any, url: str, expected: int) -> None:
    page.goto(f"{url}/#dlq")
    expect(page.locator("#dlq-table tbody tr")).to_have_count(expected, timeout=30_000)


def act(page: Any, rid: str, action: str) -> None:
    """Click the row's button, check the confirmation says what will happen, confirm, see the toast."""
    page.locator(f'#dlq-table tbody tr[data-id="{rid}"] button[data-action="{action}"]').click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-title")).to_contain_text(rid)
    page.locator("#confirm-ok").click()
    expect(page.locator("#confirm")).to_be_hidden()
    verb = "Rescheduled" if action == "reschedule" else "Purged"
    expect(page.locator("#toasts")).to_contain_text(f"{verb} 1 record ({rid})")
    expect(page.locator(f'#dlq-table tbody tr[data-id="{rid}"]')).to_have_count(0)


def test_console_story(make_env: Callable[..., kit.Env], http_writers: harness.Starter, page: Any,
                       tmp_path: Path) -> None:
    env = make_env(partitions=3)
    db = env.databases[0]
    kit.sql(db, DDL)
    vault = {"vanity": "vault", "host": "127.0.0.1", "port": harness.dead_port(), "databases": [db],
             "connect_timeout_s": 1}
    env.extra_destinations = [vault]
    # the operator reschedules and purges by hand here: the automatic redrive (tested elsewhere) stays off
    env.pipeline = {"hold_s": 0.5, "retry_initial_backoff_s": 0.05, "circuit_open_s": 2.0, "redrive": False}
    port = harness.free_port()
    writer = http_writers(harness.http_config(env, port), port)
    writer.wait_ready()
    url = writer.url

    stream = Stream(env.topic, db)
    stream.start()
    try:
        # ------------------------------------------------------------------ the console loads
        page.goto(url)
        expect(page).to_have_title("KaPoW console")
        expect(page.locator("#ready-text")).to_contain_text("Ready · 3 partitions")
        expect(page.locator("#group-meta")).to_contain_text(env.group)

        # ------------------------------------------------------------------ its charts move while packets flow
        kit.wait_for(lambda: (chart_state(page, "rate")["last"].get("landed") or 0) > 0, 30, "a landed rate")
        before = chart_state(page, "rate")
        kit.wait_for(lambda: chart_state(page, "rate")["version"] >= before["version"] + 2, 15,
                     "the chart to be redrawn from fresh stats twice")
        after = chart_state(page, "rate")
        assert after["points"] > before["points"] or after["image"] != before["image"]
        assert after["image"] != before["image"]
        assert float(page.locator("#kpi-landed-rate").inner_text().replace(",", "")) > 0
        kit.wait_for(lambda: chart_state(page, "latency")["last"].get("p99") is not None, 20, "a p99 latency")
        assert chart_state(page, "errors")["last"]["error_pct"] > 0  # one packet in 40 is bad
        expect(page.locator("#destinations tbody tr")).to_have_count(2)

        # ------------------------------------------------------------------ packets for a dead destination park
        parked_values = [make_packet([kit.dest(db, "events", vanity="vault")], {"id": 900_000 + i, "v": f"vault {i}"})
                         for i in range(3)]
        kit.publish(env.topic, parked_values)
        expect(page.locator("#recent-dlq tbody tr")).to_have_count(3, timeout=30_000)
        expect(page.locator("#kpi-dlq-value")).to_have_text("3")
        expect(page.locator("#dlq-badge")).to_have_text("3")
        expect(page.locator("#destinations tbody")).to_contain_text("vault")
        warmup = float(os.environ.get("KAPOW_CONSOLE_WARMUP_S", "0"))
        if warmup:
            time.sleep(warmup)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(tmp_path / "overview.png"))
        if os.environ.get("KAPOW_CONSOLE_SCREENSHOT"):
            page.screenshot(path=os.environ["KAPOW_CONSOLE_SCREENSHOT"])

        # ------------------------------------------------------------------ user errors, read-only
        page.goto(f"{url}/#user-errors")
        expect(page.locator("#ue-table tbody tr").first).to_be_visible(timeout=30_000)
        expect(page.locator("#ue-table tbody tr").first).to_contain_text("unknown_column")
        page.locator("#ue-table tbody tr").first.click()
        expect(page.locator("#drawer")).to_be_visible()
        expect(page.locator("#drawer-actions")).to_be_hidden()  # nothing to reschedule or purge here
        expect(page.locator("#drawer-value")).to_contain_text('"colour": "red"')

        # ------------------------------------------------------------------ the DLQ browser: filter and inspect
        open_dlq(page, url, 3)
        expect(page.locator("#f-code")).to_contain_text("database_unavailable (3)")
        page.fill("#f-destination", "no/such/destination")
        page.click("#dlq-filters button[type=submit]")
        expect(page.locator("#dlq-table tbody tr")).to_have_count(0)
        expect(page.locator("#dlq-empty")).to_be_visible()
        page.click("#f-clear")
        expect(page.locator("#dlq-table tbody tr")).to_have_count(3)
        ids = dlq_ids(page)
        page.locator(f'#dlq-table tbody tr[data-id="{ids[0]}"] td.reason').click()
        expect(page.locator("#drawer-title")).to_have_text(ids[0])
        expect(page.locator("#drawer-value")).to_contain_text('"vanity": "vault"')
        expect(page.locator("#drawer-meta")).to_contain_text("database_unavailable")
        expect(page.locator("#drawer-headers")).to_contain_text("kapow-error-class: system")
        page.click("#drawer-close")
        # a purge can be called off: nothing happens
        actions: list[str] = []
        page.on("request", lambda r: actions.append(r.url) if r.method == "POST" else None)
        page.locator(f'#dlq-table tbody tr[data-id="{ids[0]}"] button[data-action="purge"]').click()
        page.click("#confirm-cancel")
        expect(page.locator("#confirm")).to_be_hidden()
        open_dlq(page, url, 3)  # read the queue again: all three are there, and no action was ever sent
        assert dlq_ids(page) == ids and actions == []
    finally:
        stream.halt.set()
        stream.join(10)

    # ------------------------------------------------------------------ the destination comes back
    assert writer.stop() == 0
    env.extra_destinations = [{**vault, "port": kit.PG_PORT}]
    writer = http_writers(harness.http_config(env, port), port)
    writer.wait_ready()
    open_dlq(page, url, 3)
    rescheduled, purged, kept = dlq_ids(page)
    payloads = {r["id"]: json.loads(r["value_preview"])["data"]["id"]
                for r in harness.get_json(url, "/api/dlq")["records"]}

    act(page, rescheduled, "reschedule")
    kit.wait_for(lambda: kit.scalar(db, "SELECT count(*) FROM events WHERE id = %s", (payloads[rescheduled],)) == 1,
                 30, "the rescheduled packet's row")
    act(page, purged, "purge")
    assert dlq_ids(page) == [kept]
    expect(page.locator("#dlq-range")).to_contain_text("1\u20131 of 1")

    # ------------------------------------------------------------------ both states hold: reload, then restart
    page.reload()
    expect(page.locator("#dlq-table tbody tr")).to_have_count(1)
    assert dlq_ids(page) == [kept]
    assert writer.stop() == 0
    writer = http_writers(harness.http_config(env, port), port)
    writer.wait_ready()
    open_dlq(page, url, 1)
    assert dlq_ids(page) == [kept]
    expect(page.locator("#dlq-badge")).to_have_text("1")
    kit.wait_for(lambda: consumed_to_the_end(env), 60, "the restarted writer to commit everything it was given")
    assert kit.scalar(db, "SELECT count(*) FROM events WHERE id = %s", (payloads[rescheduled],)) == 1
    assert kit.scalar(db, "SELECT count(*) FROM events WHERE id = %s", (payloads[purged],)) == 0
    assert kit.scalar(db, "SELECT count(*) FROM events WHERE id = %s", (payloads[kept],)) == 0
    assert page.js_errors == []
    assert writer.stop() == 0
