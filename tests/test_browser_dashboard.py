"""The dashboard in a real Chromium: filters, pages, the back button, threads, the export link."""

import csv
import io
import re

import pytest

from support.dashboard_data import message_with, receipt, register, reply

pytestmark = pytest.mark.browser


def wait_for_query(page, query: str) -> None:
    """Wait until the address bar shows `query` (htmx pushes it without a page load)."""
    page.wait_for_function("q => location.search === q", arg=query)


def wait_rows(page, n: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('#messages-body tr').length === n", arg=n
    )


def row_ids(page) -> list[str]:
    return [
        i.removeprefix("msg-")
        for i in page.locator("#messages-body tr").evaluate_all("rows => rows.map(r => r.id)")
    ]


@pytest.fixture
def data(client):
    message_with(client, "b-success", "success", phone="79100000001")
    message_with(client, "b-seen", "seen", phone="79100000002")
    message_with(client, "b-failed", "failed", phone="79200000003")
    message_with(client, "b-seen2", "seen", phone="79200000004")
    return client


def test_filter_without_reload_then_back_button(page, data):
    page.goto("/")
    assert row_ids(page) == ["b-seen2", "b-failed", "b-seen", "b-success"]
    page.evaluate("window.marker = 'same page'")
    page.get_by_label("seen", exact=True).check()
    wait_for_query(page, "?status=seen")
    wait_rows(page, 2)
    assert row_ids(page) == ["b-seen2", "b-seen"]
    # htmx swapped the results: no full reload happened.
    assert page.evaluate("window.marker") == "same page"
    page.get_by_label("Phone").fill("7920")
    page.get_by_label("Phone").press("Enter")
    wait_for_query(page, "?status=seen&phone=7920")
    wait_rows(page, 1)
    assert row_ids(page) == ["b-seen2"]
    assert page.locator("#counters").inner_text().startswith("Messages\n1")
    page.go_back()
    wait_for_query(page, "?status=seen")
    wait_rows(page, 2)
    assert row_ids(page) == ["b-seen2", "b-seen"]
    page.go_back()
    wait_rows(page, 4)
    assert row_ids(page) == ["b-seen2", "b-failed", "b-seen", "b-success"]


def test_remove_a_filter_chip_updates_the_form(page, data):
    page.goto("/?status=seen&phone=791")
    assert row_ids(page) == ["b-seen"]
    page.get_by_role("link", name="Remove filter phone: 791").click()
    wait_for_query(page, "?status=seen")
    wait_rows(page, 2)
    assert page.get_by_label("Phone").input_value() == ""
    assert page.get_by_label("seen", exact=True).is_checked()


def test_filters_work_without_javascript(browser, live_server, app, data):
    from support.browser import signed_in_tab

    context, tab = signed_in_tab(browser, app, live_server.url, java_script_enabled=False)
    tab.goto("/")
    tab.get_by_label("failed", exact=True).check()
    tab.get_by_role("button", name="Apply").click()
    tab.wait_for_url(re.compile(r"/\?status=failed$"))
    assert row_ids(tab) == ["b-failed"]
    context.close()


def test_paging_next_previous_and_size(page, client):
    made = [f"p{i:02d}" for i in range(30)]
    for rid in made:
        receipt(client, rid, "delivered")
    newest_first = list(reversed(made))
    page.goto("/")
    page.get_by_label("Per page").select_option("25")
    wait_for_query(page, "?size=25")
    wait_rows(page, 25)
    assert row_ids(page) == newest_first[:25]
    page.get_by_role("link", name="Next ›").click()
    wait_rows(page, 5)
    assert row_ids(page) == newest_first[25:]
    assert page.get_by_role("link", name="Next ›").count() == 0
    page.get_by_role("link", name="‹ Previous").click()
    wait_rows(page, 25)
    assert row_ids(page) == newest_first[:25]
    page.go_back()
    wait_rows(page, 5)
    assert row_ids(page) == newest_first[25:]


def test_thread_page_from_the_messages_list(page, client):
    phone = "79100000055"
    register(client, "th-1", phone, text="Your code is 4321")
    receipt(client, "th-1", "seen")
    reply(client, "th-1", phone, text="thanks\nsee you")
    reply(client, "th-1", phone, media="https://example.com/photo.png", file_name="photo.png")
    reply(client, "th-1", phone, media="javascript:alert(1)", file_name="evil.png")
    page.goto("/")
    page.locator("#msg-th-1").get_by_role("link", name=phone).click()
    page.wait_for_url(re.compile(rf"/conversations/{phone}$"))
    bubbles = page.locator("#thread article")
    assert bubbles.evaluate_all("items => items.map(i => i.className)") == [
        "bubble bubble-out",
        "bubble bubble-in",
        "bubble bubble-in",
        "bubble bubble-in",
    ]
    assert page.locator("#thread-msg-th-1 .badge").inner_text() == "seen"
    # Line breaks of a text reply are kept on screen.
    assert bubbles.nth(1).locator(".bubble-text").inner_text() == "thanks\nsee you"
    assert (
        page.get_by_role("link", name="photo.png").get_attribute("href")
        == "https://example.com/photo.png"
    )
    assert page.get_by_role("link", name="evil.png").count() == 0
    assert page.locator("a[href^='javascript:']").count() == 0
    page.get_by_role("link", name=re.compile("^th-1")).first.click()
    page.wait_for_url(re.compile(r"/messages/th-1$"))
    assert page.locator("#timeline li").count() == 1


def test_export_link_downloads_what_is_filtered(page, data):
    page.goto("/?status=seen")
    with page.expect_download() as download_info:
        page.locator("#export-link").click()
    download = download_info.value
    assert re.fullmatch(r"viberwatch-messages-\d{4}-\d{2}-\d{2}\.csv", download.suggested_filename)
    text = open(download.path(), encoding="utf-8-sig").read()
    assert [r["request_id"] for r in csv.DictReader(io.StringIO(text))] == ["b-seen2", "b-seen"]


def test_times_are_shown_in_the_viewers_zone_with_utc_on_hover(page, data):
    page.goto("/")
    first = page.locator("#messages-body time").first
    page.wait_for_function(
        "() => document.querySelector('#messages-body time').dataset.localised === '1'"
    )
    title = first.get_attribute("title")
    assert title.endswith(" UTC")
    assert first.inner_text() != title


def test_copy_button_and_keyboard_focus(page, data):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto("/")
    button = page.locator("#msg-b-seen2 button.copy")
    button.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#msg-b-seen2 button.copy').textContent === 'copied'"
    )
    assert page.evaluate("navigator.clipboard.readText()") == "b-seen2"
    # The skip link is the first stop of the keyboard.
    page.keyboard.press("Shift+Tab")
    page.goto("/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
