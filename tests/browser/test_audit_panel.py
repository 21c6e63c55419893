"""Issue #10: the console's audit panel, in a real browser, against a real writer, broker and database.

The panel runs ``GET /api/audit`` and shows where every record went; a row deleted behind KaPoW's back turns the
verdict to "1 missing" and names the record. ``KAPOW_AUDIT_SCREENSHOT=path`` saves the panel there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from kapow.contract import make_packet
from tests.browser import harness
from tests.integration import kit

pytestmark = pytest.mark.integration

DDL = "CREATE TABLE public.events (id bigint PRIMARY KEY, v text NOT NULL)"


def kpi(page: Any, category: str) -> str:
    text: str = page.locator(f'#audit-summary [data-category="{category}"] .value').inner_text()
    return text.replace(",", "")


def test_audit_panel_shows_every_record_and_what_is_missing(make_env: Callable[..., kit.Env],
                                                            http_writers: harness.Starter, page: Any) -> None:
    env = make_env(partitions=2)
    db = env.databases[0]
    kit.sql(db, DDL)
    wh = kit.dest(db, "events")
    kit.publish(env.topic, [make_packet([wh], {"id": i, "v": "ok"}) for i in range(30)])
    kit.publish(env.topic, [make_packet([wh], {"id": 100 + i, "v": "x", "colour": "red"}) for i in range(2)])
    kit.publish(env.topic, [b"not ours"] * 3, pipeline=False)
    port = harness.free_port()
    writer = http_writers(harness.http_config(env, port), port)
    writer.wait_ready()
    kit.wait_for(lambda: all(kit.committed_offsets(env.group, env.topic).get(p, -1) >= end
                             for p, end in kit.end_offsets(env.topic).items()), 60, "every offset committed")

    page.goto(f"{writer.url}/#audit")
    expect(page.locator("#audit-topic option")).to_have_count(2)  # "all topics" and the writer's one
    page.click("#audit-run")
    expect(page.locator("#audit-status")).to_contain_text("everything is accounted for", timeout=60_000)
    assert (kpi(page, "total"), kpi(page, "landed"), kpi(page, "user_errors"), kpi(page, "filtered"),
            kpi(page, "missing")) == ("35", "30", "2", "3", "0")
    expect(page.locator("#audit-table tbody tr")).to_have_count(2)
    expect(page.locator("#audit-missing")).to_be_hidden()

    kit.sql(db, "DELETE FROM events WHERE id = 7")  # behind KaPoW's back
    page.click("#audit-run")
    expect(page.locator("#audit-status")).to_contain_text("1 missing", timeout=60_000)
    assert (kpi(page, "landed"), kpi(page, "missing")) == ("29", "1")
    expect(page.locator("#audit-missing li")).to_have_count(1)
    expect(page.locator("#audit-missing li")).to_contain_text(f"{env.topic}[")
    expect(page.locator("#audit-table td.bad")).to_have_count(1)
    if os.environ.get("KAPOW_AUDIT_SCREENSHOT"):
        page.screenshot(path=os.environ["KAPOW_AUDIT_SCREENSHOT"])
    assert page.js_errors == []
    assert writer.stop() == 0
