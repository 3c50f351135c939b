"""Every page in a real Chromium: nothing blocked or failing in the console, and a layout that
fits a 1366 px window and stays usable on a 390 px phone."""

from datetime import UTC, datetime, timedelta

import pytest

from support.browser import watch_console
from support.servers import free_port
from support.timed_ingest import receipt, register, reply
from test_analytics import CUSTOM, load_fixture

pytestmark = pytest.mark.browser


def test_analytics_charts_redrawn_after_a_swap_break_no_policy(page, app):
    """htmx settles a swapped report by copying the old elements' attributes onto the new
    ones; a chart's canvas has a style attribute (Chart.js sizes it), which the policy blocks."""
    with app.app_context():
        load_fixture()
    problems = watch_console(page)
    page.goto(f"/analytics?{CUSTOM}")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-cost'))"
    )
    with page.expect_response(
        lambda r: "/analytics?" in r.url and r.request.headers.get("hx-request")
    ):
        page.evaluate("htmx.trigger('#analytics-report', 'analytics-refresh')")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-cost'))"
    )
    page.wait_for_timeout(300)
    assert problems == []


# A previous year: the widest dates the pages show.
T = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
RANGE = "range=custom&start=2025-03-01T09:00&end=2025-03-01T10:00"
PHONE = "79100000003"
OUTCOMES = ["seen", "delivered", "seen", "failed", "expired", "success", "seen", "delivered"]
STEPS = {
    "seen": ["success", "delivered", "seen"],
    "delivered": ["success", "delivered"],
    "failed": ["success", "failed"],
    "expired": ["success", "expired"],
    "success": ["success"],
}
COST = {
    "currency": "USD",
    "localPrice": 1234.567891,
    "originalPrice": 0.0123,
    "rateType": "Transactional",
}


@pytest.fixture
def app_config(app_config):
    # The built-in alert rules, and a receiver that is down: notices with failed attempts.
    app_config.update(ALERT_URL=f"http://127.0.0.1:{free_port()}/hook", ALERT_TIMEOUT=1)
    return app_config


def load_busy_day(app) -> str:
    """Two dozen messages of every outcome (with cost, codes, an anomaly, replies) in a quarter
    of an hour, enough failures to fire the default failed-rate rule, whose notice cannot be
    delivered. Returns a requestId."""
    from app.alerts import notices as alerts

    with app.app_context():
        for i in range(24):
            rid = f"{i:02d}f6a7d49946094857ae02812969a83056"
            start = T + timedelta(seconds=30 * i)
            register(start, rid, f"791000000{i % 6:02d}", text=f"Your order {1000 + i} has shipped")
            for n, step in enumerate(STEPS[OUTCOMES[i % len(OUTCOMES)]]):
                receipt(
                    start + timedelta(seconds=2 + n),
                    rid,
                    step,
                    cost=COST if step == "success" else None,
                )
            if i % 5 == 0:
                reply(
                    start + timedelta(minutes=1),
                    rid,
                    f"791000000{i % 6:02d}",
                    "Thanks! Can you leave it with the neighbour at number 12, please?",
                )
        receipt(T + timedelta(minutes=13), rid, "failed")  # beside delivered: an anomaly
        alerts.check(T + timedelta(minutes=14))
        assert alerts.firing(), "the default failed-rate rule fires on this day"
    return rid


FITS_JS = """() => {
  const page = document.documentElement;
  const cut = [...document.querySelectorAll('.table-wrap, .card, .an-card, .feed, .reply-box, main table')]
    .filter(el => el.scrollWidth > el.clientWidth + 1)
    .map(el => `${el.tagName.toLowerCase()}.${el.className}: ${el.scrollWidth} > ${el.clientWidth}`);
  return {page: page.scrollWidth, window: window.innerWidth, cut};
}"""


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/alerts",
        f"/analytics?{RANGE}",
        "/analytics",
        "/conversations",
        f"/conversations/{PHONE}",
        "/rejected",
    ],
)
def test_pages_fit_a_1366_window(page, app, path):
    load_busy_day(app)
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(path)
    page.wait_for_load_state("networkidle")
    fits = page.evaluate(FITS_JS)
    assert fits["page"] <= fits["window"] and fits["cut"] == [], fits


def test_every_column_of_the_messages_table_shows_at_1366(page, app):
    load_busy_day(app)
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto("/")
    wrap = page.locator(".table-wrap").bounding_box()
    last = page.locator("table.messages thead th").last
    assert last.inner_text() == "Last activity"
    box = last.bounding_box()
    assert box["x"] + box["width"] <= wrap["x"] + wrap["width"]
    # Short times in the cells; the full time, and UTC, on hover.
    cell = page.locator("#messages-body > tr").first.locator("td.col-last time")
    assert len(cell.inner_text()) <= 13 and "2025" in cell.get_attribute("title")


PHONE_PAGES = [
    "/",
    f"/messages/{'23f6a7d49946094857ae02812969a83056'}",
    "/conversations",
    f"/conversations/{PHONE}",
    "/rejected",
    f"/analytics?{RANGE}",
    "/alerts",
]


@pytest.mark.parametrize("path", PHONE_PAGES)
def test_pages_are_usable_on_a_390_phone(page, app, path):
    load_busy_day(app)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(path)
    page.wait_for_load_state("networkidle")
    fits = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert fits[0] <= fits[1], fits
    # Every navigation link is on screen.
    for link in page.locator(".nav a, .nav button").all():
        box = link.bounding_box()
        assert box and 0 <= box["x"] and box["x"] + box["width"] <= 390, link.inner_text()


def test_messages_on_a_phone_show_the_essentials_of_every_row(page, app):
    load_busy_day(app)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    rows = page.locator("#messages-body > tr")
    assert rows.count() == 24
    for i in (0, 23):
        row = rows.nth(i)
        for part in ("td.col-id a", "td.col-phone a", "td.col-status .badge", "td.col-last time"):
            box = row.locator(part).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (i, part, box)


def test_a_thread_uses_the_width_sent_on_the_right_replies_on_the_left(page, app):
    load_busy_day(app)
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(f"/conversations/{PHONE}")
    thread = page.locator("#thread").bounding_box()
    content = page.locator("main").bounding_box()
    assert thread["width"] >= 0.9 * content["width"] - 40
    out = page.locator("#thread > .bubble-out").first.bounding_box()
    answer = page.locator("#thread > .bubble-in").first.bounding_box()
    assert abs((out["x"] + out["width"]) - (thread["x"] + thread["width"])) <= 2
    assert abs(answer["x"] - thread["x"]) <= 2
    assert out["x"] > thread["x"] + thread["width"] / 2


def test_no_page_logs_an_error_or_fails_a_request(page, app):
    rid = load_busy_day(app)
    problems = watch_console(page)
    failed = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    pages = [
        "/",
        "/?status=seen&status=failed",
        f"/messages/{rid}",
        "/conversations",
        f"/conversations/{PHONE}",
        "/rejected",
        "/analytics",
        f"/analytics?{RANGE}",
        "/alerts",
    ]
    for path in pages:
        page.goto(path)
        if page.locator("body[ws-connect]").count():
            page.wait_for_selector("body[data-live-state=live]")
        page.wait_for_load_state("networkidle")
    assert problems == [] and failed == []
