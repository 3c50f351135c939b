"""Every page on a 390 px phone and a 1366 px desk, in a real Chromium: no sideways scrolling
of the page, and its main action on screen and usable; rejected bodies as cards on a phone;
every filter label beside its own input; a secret shown once whole on screen, with its copy
button."""

import httpx
import pytest

from support import secrets_in_logs
from support.accounts import TEST_PASSWORD, TEST_USER
from support.servers import free_port
from test_accessibility import TAG, busy_site
from test_browser_pages import FITS_JS, PHONE, RANGE

pytestmark = pytest.mark.browser

SIZES = pytest.mark.parametrize(
    "size", [{"width": 390, "height": 844}, {"width": 1366, "height": 768}], ids=["390", "1366"]
)


@pytest.fixture(scope="module")
def site(request, tmp_path_factory):
    """One app (with sending configured, so the reply box can send), one data load and one
    live server for the module. Yields the base URL and a requestId of the busy day."""
    with busy_site(
        request,
        tmp_path_factory.mktemp("fit"),
        # Nothing listens there: no test here sends.
        NXCLOUD_BASE_URL=f"http://127.0.0.1:{free_port()}",
        NXCLOUD_ACCESS_KEY="fit-key",
        NXCLOUD_ACCESS_SECRET="fit-secret",
        NXCLOUD_APPKEY="FITAPP01",
    ) as (server, rid):
        # A body that fails validation, naming a message that exists, through the webhook.
        bad = httpx.post(
            f"{server.url}/webhooks/viber/dr", json={"status": "read", "requestId": rid}
        )
        assert bad.status_code == 422
        yield server.url, rid


@pytest.fixture
def open_tab(browser, site):
    contexts = []

    def open_(size):
        context = browser.new_context(base_url=site[0], viewport=size)
        contexts.append(context)
        tab = context.new_page()
        tab.goto("/login")
        tab.fill("#username", TEST_USER)
        tab.fill("#password", TEST_PASSWORD)
        tab.click("button[type=submit]")
        tab.wait_for_url(lambda url: "/login" not in url)
        return tab

    yield open_
    for context in contexts:
        context.close()


def settle(tab):
    if tab.locator("body[ws-connect]").count():
        tab.wait_for_selector("body[data-live-state=live]")
    tab.wait_for_load_state("networkidle")


# Each page, and its main actions: (selector, click it for real). The rest are checked with a
# trial click (every actionability check, no click): Reprocess would change the data, an
# export would download.
PAGES = {
    "/": [
        ("#filters button[type=submit]", True),
        ("#export-link", False),
        ("#messages-body > tr:first-child td.col-id a", True),
    ],
    "/messages/{rid}": [("#msg-summary", None)],
    "/conversations": [("form.filters button[type=submit]", True)],
    f"/conversations/{PHONE}": [("#reply-box button[type=submit]", True)],
    "/rejected": [("#rejected-body > tr:first-child button[type=submit]", False)],
    f"/analytics?{RANGE}": [(".an-filters button[type=submit]", True)],
    "/alerts": [("#alert-rules-h", None)],
    "/campaigns?range=all": [("form.an-filters button[type=submit]", True)],
    "/admin/users": [("button:text-is('Create user')", False)],
    "/admin/tokens": [("button:text-is('Create token')", False)],
    "/admin/audit": [("button:text-is('Filter')", True)],
    "/account": [("button:text-is('Change password')", False)],
}
# Pages whose tables stack into cards on a phone: no table or card of theirs scrolls sideways
# either, at any width.
STACKED = {"/admin/users", "/admin/tokens", "/admin/audit", "/account"}


def assert_on_screen(tab, selector, width):
    # Where the page lays it out, before anything scrolls (a table that scrolls sideways
    # would bring it into view, and hide the rest of its row).
    target = tab.locator(selector).first
    box = target.bounding_box()
    assert box and box["width"] > 0, selector
    assert 0 <= box["x"] and box["x"] + box["width"] <= width, (selector, box)
    return target


@SIZES
@pytest.mark.parametrize("path", list(PAGES))
def test_the_page_fits_and_its_main_action_is_on_screen_and_usable(open_tab, site, path, size):
    tab = open_tab(size)
    tab.goto(path.format(rid=site[1]))
    settle(tab)
    width = size["width"]
    fits = tab.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert fits[0] <= fits[1] == width, (path, fits)
    if path in STACKED:
        assert tab.evaluate(FITS_JS)["cut"] == [], path
    for selector, click in PAGES[path]:
        target = assert_on_screen(tab, selector, width)
        if click is None:
            continue
        assert target.is_visible() and target.is_enabled(), selector
        target.click(trial=not click, timeout=5000)
        if click:
            settle(tab)
            fits = tab.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
            assert fits[0] <= fits[1], (path, selector, fits)
            tab.goto(path.format(rid=site[1]))
            settle(tab)


@SIZES
def test_opening_a_message_from_the_list_shows_it(open_tab, site, size):
    tab = open_tab(size)
    tab.goto("/")
    settle(tab)
    link = tab.locator("#messages-body > tr").first.locator("td.col-id a")
    rid = link.inner_text()
    link.click()
    tab.wait_for_url(f"**/messages/{rid}")
    assert rid in tab.locator("h1").inner_text()


@SIZES
def test_a_rejected_body_shows_reason_request_id_and_reprocess(open_tab, site, size):
    tab = open_tab(size)
    tab.goto("/rejected")
    settle(tab)
    width = size["width"]
    rows = tab.locator("#rejected-body > tr")
    assert rows.count() >= 2
    for i in range(rows.count()):
        row = rows.nth(i)
        parts = ["td.col-reason p", "td.col-outcome .badge", "td.col-action button"]
        if row.locator("td.col-rid .request-id").count():
            parts.append("td.col-rid .request-id")
        for part in parts:
            box = row.locator(part).first.bounding_box()
            assert box and 0 <= box["x"] and box["x"] + box["width"] <= width, (i, part, box)
        # No row is mostly blank: its height is what its content needs.
        content = row.evaluate("tr => [...tr.children].reduce((h, td) => h + td.scrollHeight, 0)")
        assert row.bounding_box()["height"] <= content + 40, (i, content)
    # The body naming a known message links to it.
    link = tab.locator(f"#rejected-body td.col-rid a.request-id:text-is('{site[1]}')")
    assert link.count() == 1 and link.get_attribute("href").endswith(f"/messages/{site[1]}")


PAGES_WITH_FILTERS = [f"/analytics?{RANGE}", "/campaigns?range=all", f"/campaigns/show?tag={TAG}"]

# Each label of the filter forms and the control it names: the label right above its control,
# left-aligned with it (a checkbox's label holds its box).
LABELS_JS = """() => [...document.querySelectorAll('form.an-filters label[for]')].map(label => {
  const control = document.getElementById(label.htmlFor);
  const l = label.getBoundingClientRect(), c = control.getBoundingClientRect();
  return {label: label.textContent.trim(), dx: Math.round(c.left - l.left),
          dy: Math.round(c.top - l.bottom), same: label.parentElement === control.parentElement};
})"""


@SIZES
@pytest.mark.parametrize("path", PAGES_WITH_FILTERS)
def test_every_filter_label_sits_with_its_input(open_tab, path, size):
    tab = open_tab(size)
    tab.goto(path)
    settle(tab)
    found = tab.evaluate(LABELS_JS)
    assert found
    for item in found:
        assert item["same"] and abs(item["dx"]) <= 2 and -2 <= item["dy"] <= 12, item


@SIZES
@pytest.mark.parametrize("path", ["/admin/users", "/admin/tokens"])
def test_a_secret_shown_once_fits_and_can_be_copied(open_tab, path, size):
    """A new user's password or a new token, shown once: whole on screen, beside a copy button
    that works, on a page that still fits."""
    tab = open_tab(size)
    tab.goto(path)
    settle(tab)
    name = f"fit-{path.rsplit('/', 1)[1]}-{size['width']}-with-a-rather-long-name"
    if path == "/admin/users":
        tab.fill("#new-username", name)
        tab.click("button:text-is('Create user')")
    else:
        tab.fill("#token-name", name)
        tab.click("button:text-is('Create token')")
    secret = tab.locator("#secret-value")
    secret.wait_for()
    value = secret.inner_text().strip()
    secrets_in_logs.add_secret(value)
    assert name in tab.locator("#done").inner_text()
    width = size["width"]
    fits = tab.evaluate(FITS_JS)
    assert fits["page"] <= fits["window"] == width and fits["cut"] == [], fits
    assert_on_screen(tab, "#secret-value", width)
    copy = assert_on_screen(tab, "#secret button.copy", width)
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy.click()
    assert tab.evaluate("navigator.clipboard.readText()") == value
