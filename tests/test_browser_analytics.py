"""The analytics page in a real browser: charts drawn under the CSP, live refresh on activity."""

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from support.browser import watch_console
from support.fixtures import fixture_json
from support.timed_ingest import receipt, register, reply
from test_analytics import CUSTOM, load_fixture

pytestmark = pytest.mark.browser

CHARTS = ("funnel", "rates", "latency-delivered", "latency-seen", "failures", "cost", "replies")
# Set SCREENSHOTS to a folder (docs/screenshots) to refresh the README's picture.
SCREENSHOTS = os.environ.get("SCREENSHOTS")

DRAWN_JS = """ids => ids.map(id => {
  const canvas = document.getElementById('chart-' + id);
  if (!canvas || !window.Chart.getChart(canvas)) return [id, 0];
  const ctx = canvas.getContext('2d');
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
  return [id, painted];
})"""


def test_charts_are_drawn_with_tables_beside_them(page, app):
    with app.app_context():
        load_fixture()
    problems = watch_console(page)
    page.goto(f"/analytics?{CUSTOM}")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-cost'))"
    )
    drawn = dict(page.evaluate(DRAWN_JS, list(CHARTS)))
    assert all(drawn[c] > 500 for c in CHARTS), drawn
    assert page.inner_text("[data-percentile='delivered-p50']") == "3.0 s"
    assert page.inner_text("tr[data-stage='seen'] td") == "2"
    # The phones that replied most load after the page, in place of their placeholder.
    rows = page.locator("#an-top-phones:not([aria-busy]) tbody tr")
    rows.first.wait_for()
    assert rows.all_inner_texts() == ["100\t2", "300\t1", "800\t1"]
    assert not problems, problems


AXES_JS = """ids => ids.map(id => {
  const chart = Chart.getChart(document.getElementById('chart-' + id));
  return [id, chart.scales.x.labelRotation, chart.scales.x.ticks.map(t => t.label)];
})"""

BARS_JS = """id => {
  const canvas = document.getElementById('chart-' + id);
  const bars = Chart.getChart(canvas).getDatasetMeta(0).data;
  return [bars.map(b => b.horizontal ? b.height : b.width), canvas.parentElement.clientHeight];
}"""


def test_time_axes_are_legible_and_the_failures_chart_fits_its_rows(page, app):
    with app.app_context():
        load_fixture()
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto(f"/analytics?{CUSTOM}")  # an hour, per minute: 60 buckets
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-replies'))"
    )
    for chart, rotation, labels in page.evaluate(AXES_JS, ["rates", "cost", "replies"]):
        # Short labels, level: the hour and minute (the date at midnight); the full UTC value
        # is in the tooltip and the table beside the chart.
        assert rotation == 0, chart
        assert all(len(label) == 5 for label in labels), (chart, labels)
        assert "12:00" in labels and "12:59" not in labels, (
            chart,
            labels,
        )  # every tick is not drawn
    thickness, height = page.evaluate(BARS_JS, "failures")
    assert len(thickness) == 3 and max(thickness) <= 28, thickness  # three codes, as thin bars
    assert height <= 3 * 40 + 60, height  # the chart grows with its rows, not a fixed box


def test_filter_change_swaps_report_and_redraws(page, app):
    with app.app_context():
        load_fixture()
    page.goto(f"/analytics?{CUSTOM}")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-funnel'))"
    )
    page.check("input[name=status][value=failed]")
    page.wait_for_function(
        "() => document.querySelector(\"tr[data-stage='accepted'] td\").textContent.trim() === '2'"
    )
    assert "status=failed" in page.url
    # The swapped-in report has new canvases; analytics.js draws them once htmx settles.
    page.wait_for_function(
        f"() => ({DRAWN_JS})(['funnel', 'failures']).every(([id, n]) => n > 500)"
    )


def test_live_activity_refreshes_the_report(page, live_server):
    page.goto("/analytics?range=1h")
    page.wait_for_function("() => document.body.dataset.liveState === 'live'")
    assert page.inner_text("tr[data-stage='accepted'] td") == "0"
    body = fixture_json("dr_success")
    response = httpx.post(f"{live_server.url}/webhooks/viber/dr", json=body, timeout=10)
    assert response.status_code == 200
    page.wait_for_function(
        "() => document.querySelector(\"tr[data-stage='accepted'] td\").textContent.trim() === '1'",
        timeout=15000,
    )
    assert "USD" in page.inner_text("#an-cost-h ~ .an-side table")


def load_demo(now: datetime) -> None:
    """A busy day: a few hundred messages with every outcome, cost and replies."""
    rnd = random.Random(7)
    # The picture wants a full day; the check only needs every chart to have something.
    count = 240 if SCREENSHOTS else 30
    for i in range(count):
        rid = f"demo{i:04d}"
        start = (
            now
            - timedelta(hours=23, minutes=50)
            + timedelta(minutes=i * 1416 / count + rnd.random())
        )
        phone = f"7910000{rnd.randrange(40):04d}"
        register(start, rid, phone)
        roll = rnd.random()
        if roll < 0.04:
            continue  # still pending
        cost = {
            "currency": "USD" if rnd.random() < 0.8 else "EUR",
            "localPrice": 0.012,
            "originalPrice": 0.002,
            "rateType": "Transactional" if rnd.random() < 0.7 else "Promotional",
        }
        receipt(start + timedelta(seconds=1 + rnd.random() * 2), rid, "success", cost=cost)
        if roll < 0.12:
            code, msg = rnd.choice(
                [
                    (11000, "Viber send error"),
                    (9002, "Phone number error"),
                    (1102, "Insufficient balance"),
                ]
            )
            receipt(start + timedelta(seconds=5), rid, "failed", code=code, message=msg)
            continue
        if roll < 0.17:
            receipt(start + timedelta(hours=1), rid, "expired")
            continue
        delivered = start + timedelta(seconds=2 + rnd.expovariate(1 / 6))
        receipt(delivered, rid, "delivered")
        if rnd.random() < 0.6:
            receipt(delivered + timedelta(seconds=rnd.expovariate(1 / 240)), rid, "seen")
            if rnd.random() < 0.25:
                reply(delivered + timedelta(minutes=3), rid, phone, "thanks")


def test_screenshot(page, app, tmp_path):
    now = datetime.now(UTC)
    with app.app_context():
        load_demo(now)
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto("/analytics?range=24h")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-replies'))"
    )
    drawn = dict(page.evaluate(DRAWN_JS, list(CHARTS)))
    assert all(drawn[c] > 500 for c in CHARTS), drawn
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "analytics.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000
