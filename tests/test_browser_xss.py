"""Replies carrying script payloads, posted to the real webhook, shown in a real browser:
nothing executes (no dialog, no flag set, no injected element) and the words show literally,
on full pages and in rows pushed live."""

import httpx
import pytest

from support.bodies import REPLY, reply

pytestmark = pytest.mark.browser

PHONE = "79100000066"
RID = "c" * 32
# Each payload would set window.__xss or open a dialog if it ever ran.
PAYLOADS = [
    "<script>window.__xss = 1; alert(1)</script>",
    '<img src=x onerror="window.__xss = 2; alert(2)">',
    '"><svg onload="window.__xss = 3">',
    '</p><iframe src="javascript:window.top.__xss = 4"></iframe>',
    '{{ 7*7 }} ${alert(5)} <a href="javascript:window.__xss = 6">link</a>',
]


def push_reply(server, text, send_time, **message):
    body = reply(RID, PHONE, text, appkey="App<1>", send_time=send_time, **message)
    response = httpx.post(server.url + REPLY, json=body, timeout=10)
    assert response.status_code == 200, response.text


@pytest.fixture
def watched(page):
    """The signed-in tab, recording dialogs, page errors and CSP reports."""
    events = []
    page.on("dialog", lambda d: (events.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("pageerror", lambda e: events.append(f"error: {e}"))
    page.on(
        "console",
        lambda m: (
            events.append(f"console: {m.text}") if "Content Security Policy" in m.text else None
        ),
    )
    page.events = events
    return page


def assert_inert(page):
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x], svg[onload], iframe, script:not([src])").count() == 0
    assert page.locator("a[href^='javascript:'], a[href^='data:']").count() == 0
    # Not even a blocked attempt: CSP had nothing to stop, because escaping held.
    assert page.events == []


def test_script_payloads_show_literally_and_never_run(watched, live_server):
    page = watched
    for i, payload in enumerate(PAYLOADS):
        push_reply(live_server, payload, f"2024-06-03 17:00:0{i}")
    push_reply(
        live_server,
        None,
        "2024-06-03 17:00:09",
        media="javascript:window.__xss = 7",
        file_name='<img src=x onerror="window.__xss = 8">.jpg',
    )

    page.goto(f"/conversations/{PHONE}")
    bubbles = page.locator(".bubble-in .bubble-text")
    texts = bubbles.all_inner_texts()
    for payload in PAYLOADS:
        assert payload in texts
    assert page.get_by_text('<img src=x onerror="window.__xss = 8">.jpg').count() >= 1
    assert_inert(page)

    page.goto(f"/messages/{RID}")
    for payload in PAYLOADS:
        assert page.get_by_text(payload, exact=True).count() >= 1
    assert_inert(page)

    page.goto("/")
    page.goto("/conversations")
    assert_inert(page)


def test_payloads_pushed_live_stay_inert(watched, live_server):
    page = watched
    push_reply(live_server, "first, plain", "2024-06-03 16:59:00")
    page.goto(f"/conversations/{PHONE}")
    page.locator("#thread").get_by_text("first, plain").wait_for()
    for i, payload in enumerate(PAYLOADS):
        push_reply(live_server, payload, f"2024-06-03 17:01:0{i}")
    # Each reply arrives over the socket, rendered by the server, inserted as text.
    thread = page.locator("#thread .bubble-in .bubble-text")
    page.wait_for_function(
        "n => document.querySelectorAll('#thread .bubble-in').length >= n", arg=len(PAYLOADS) + 1
    )
    texts = thread.all_inner_texts()
    for payload in PAYLOADS:
        assert payload in texts
    assert_inert(page)
