"""The console never renders client data as HTML, in a real Chromium.

Everything the console shows of a record comes from someone else: the key, the value and the headers are the
client's, and anyone who may write to the error topics can put anything in the ``kapow-*`` headers (the reason, the
code, the destination). So the records here carry markup everywhere: a real user error from the writer (markup in
its key, its value and, through a column name, its reason) and hand-made records on both error topics (markup in
every header the console reads). Every view that shows them is opened, and the page must hold the markup as text:
no element made from it, no script run, no JavaScript error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from playwright.sync_api import expect

from kapow.client import Publisher
from kapow.contract import make_packet
from kapow.kafka.clients import make_producer
from tests.browser import harness
from tests.integration import kit

pytestmark = pytest.mark.integration

KEY = '<b class="kx">k</b><img src=x onerror="window.kx=1">'  # short enough to be named whole in a reason
VALUE = '<script>window.kx=2</script><img src=y onerror="window.kx=3"><i class="kx">v</i>'
REASON = '<svg onload="window.kx=4"><b class="kx">reason</b></svg>'


def injected(page: Any) -> dict[str, Any]:
    """What the markup would have made, had it been parsed as HTML."""
    found: dict[str, Any] = page.evaluate("""() => ({
        kx: typeof window.kx,
        elements: document.querySelectorAll('.kx, img[src="x"], img[src="y"], svg[onload]').length,
        scripts: Array.from(document.scripts).filter((s) => s.textContent.includes('kx')).length,
    })""")
    return found


NOTHING = {"kx": "undefined", "elements": 0, "scripts": 0}


def craft(topic: str, error_class: str, code: str) -> None:
    """One error record with markup in its key, value and every kapow-* header the console shows."""
    dest = {"type": "postgres", "vanity": KEY, "database": "db", "schema": "public", "table": VALUE}
    headers = [("context", b'{"consumer": {"type": "data_pipeline"}}'), (f"x-{KEY}", VALUE.encode()),
               ("kapow-error-class", error_class.encode()), ("kapow-error-code", code.encode()),
               ("kapow-error-message", REASON.encode()), ("kapow-destination", msgspec.json.encode(dest)),
               ("kapow-source-topic", KEY.encode()), ("kapow-source-partition", b"0"),
               ("kapow-source-offset", b"1"), ("kapow-source-timestamp", b"1790000000000"),
               ("kapow-attempt", b"1"), ("kapow-failed-at", b"1790000000000")]
    producer = make_producer(kit.BOOTSTRAP)
    producer.produce(topic, key=KEY.encode(), value=VALUE.encode(), headers=headers)  # type: ignore[arg-type]
    assert producer.flush(30) == 0


def test_markup_in_keys_values_and_reasons_is_shown_as_text_everywhere(
        make_env: Callable[..., kit.Env], http_writers: harness.Starter, page: Any) -> None:
    env = make_env(partitions=1)
    db = env.databases[0]
    kit.sql(db, "CREATE TABLE public.events (id bigint PRIMARY KEY, v text)")
    env.pipeline = {"redrive": False}
    port = harness.free_port()
    writer = http_writers(harness.http_config(env, port), port)
    writer.wait_ready()
    with Publisher(kit.BOOTSTRAP, env.topic) as pub:  # a real user error: the column named is markup
        pub.send_raw(make_packet([kit.dest(db, "events")], {"id": 1, "v": VALUE, KEY: 1}), KEY.encode())
    kit.read_all(env.user_errors, expect=1, timeout=60)
    craft(env.system_errors, "system", f"timeout{KEY}")
    craft(env.user_errors, "user", f"bad_value{KEY}")

    page.goto(writer.url)  # the overview lists recent parked records
    expect(page.locator("#recent-dlq tbody tr")).to_have_count(1, timeout=30_000)
    expect(page.locator("#recent-dlq tbody")).to_contain_text(f"timeout{KEY}")
    assert injected(page) == NOTHING

    page.goto(f"{writer.url}/#dlq")
    expect(page.locator("#dlq-table tbody tr")).to_have_count(1, timeout=30_000)
    table = page.locator("#dlq-table tbody")
    for text in (f"timeout{KEY}", REASON, f"{KEY}/db/public.{VALUE}", f"{KEY}[0]@1"):
        expect(table).to_contain_text(text)
    expect(page.locator("#f-code")).to_contain_text(f"timeout{KEY} (1)")
    page.locator("#dlq-table tbody tr td.reason").click()
    expect(page.locator("#drawer")).to_be_visible()
    expect(page.locator("#drawer-meta")).to_contain_text(REASON)
    expect(page.locator("#drawer-meta")).to_contain_text(KEY)
    expect(page.locator("#drawer-value")).to_contain_text(VALUE)
    expect(page.locator("#drawer-headers")).to_contain_text(f"x-{KEY}: {VALUE}")
    assert injected(page) == NOTHING
    page.click("#drawer-close")

    page.goto(f"{writer.url}/#user-errors")
    rows = page.locator("#ue-table tbody tr")
    expect(rows).to_have_count(2, timeout=30_000)
    body = page.locator("#ue-table tbody")
    expect(body).to_contain_text(f"unknown column '{KEY}'")  # the writer's own reason, naming the client's column
    expect(body).to_contain_text(f"bad_value{KEY}")
    expect(body).to_contain_text(KEY)
    expect(page.locator("#ue-code")).to_contain_text(f"bad_value{KEY}")
    for i in range(2):
        rows.nth(i).click()
        expect(page.locator("#drawer")).to_be_visible()
        expect(page.locator("#drawer-value")).to_contain_text("<script>window.kx=2</script><img src=y onerror=")
        assert injected(page) == NOTHING
        page.click("#drawer-close")
    assert injected(page) == NOTHING
    assert page.js_errors == []
    assert writer.stop() == 0
