"""The campaigns pages in a real browser: the list sorts by a click and refreshes on live
activity, a campaign's chart is drawn, the comparison marks the better figure, and every
number shown equals a recount from the messages; at 1366 px and on a 390 px phone."""

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from support.browser import watch_console
from support.fixtures import fixture_json
from support.timed_ingest import receipt, register, reply
from test_campaigns import DAY, T0, independent_count, load

pytestmark = pytest.mark.browser

# Set SCREENSHOTS to a folder (docs/screenshots) to refresh the pictures of the README and docs/analytics.md.
SCREENSHOTS = os.environ.get("SCREENSHOTS")
FITS_JS = "() => [document.documentElement.scrollWidth, window.innerWidth]"


def shown(page, tag: str) -> dict:
    """The list's figures of one campaign, as the page shows them."""
    row = page.locator(f"tr[data-tag='{tag}']")
    return {
        name: row.locator(f"td[data-col='{name}']").inner_text()
        for name in ("messages", "pending", "delivered", "seen", "failed", "expired", "replies")
    }


@pytest.mark.parametrize("width", [1366, 390])
def test_the_list_shows_a_recount_and_sorts_by_a_click(page, app, width):
    with app.app_context():
        load()
        day = T0.replace(hour=0)
        promo = independent_count("promo", day, day + timedelta(days=1))
    problems = watch_console(page)
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(f"/campaigns?range={DAY}")
    numbers = shown(page, "promo")
    assert numbers == {k: f"{promo[k]:,}" for k in numbers}
    fits = page.evaluate(FITS_JS)
    assert fits[0] <= fits[1], fits  # the table scrolls inside its card, the page does not
    # Sort by tag, ascending, then descending: htmx swaps the list, aria-sort follows.
    page.wait_for_load_state("networkidle")
    with page.expect_response(lambda r: "sort=tag" in r.url):
        page.click("#campaigns-list th a:text-is('Tag')")
    page.wait_for_selector("th[aria-sort='ascending'] >> text=Tag")
    tags = page.locator("#campaigns-list tbody th.campaign-tag").all_inner_texts()
    assert tags == sorted(tags) and set(tags) == {"late", "promo", "vip"}
    with page.expect_response(lambda r: "dir=desc" in r.url):
        page.click("#campaigns-list th a:has-text('Tag')")
    page.wait_for_selector("th[aria-sort='descending'] >> text=Tag")
    assert page.locator("#campaigns-list tbody th.campaign-tag").all_inner_texts() == sorted(
        tags, reverse=True
    )
    assert "sort=tag" in page.url and "dir=desc" in page.url
    assert not problems, problems


def test_a_campaign_page_draws_its_funnel_and_links_its_messages(page, app):
    with app.app_context():
        load()
    problems = watch_console(page)
    page.goto(f"/campaigns?range={DAY}")
    page.click("tr[data-tag='promo'] th a")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-campaign'))"
    )
    assert page.inner_text("td[data-figure='messages']") == "4"
    assert page.inner_text("td[data-figure='delivery_rate']") == "50.0%"
    assert page.inner_text("td[data-figure='p50_delivered']") == "3.0 s"
    points = page.evaluate(
        "() => Chart.getChart(document.getElementById('chart-campaign')).data.datasets"
        ".map(d => [d.label, d.data.reduce((a, b) => a + b, 0)])"
    )
    assert dict(points) == {"Messages": 4, "Accepted": 3, "Delivered": 2, "Seen": 1, "Replied": 1}
    page.click("text=See its messages")
    page.wait_for_url("**/?tag=promo")
    assert page.locator("#messages-body > tr").count() == 4
    assert not problems, problems


def test_compare_marks_the_better_campaign(page, app):
    with app.app_context():
        load()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/campaigns?range=all")
    page.fill("#cmp-a", "promo")
    page.fill("#cmp-b", "other")
    page.select_option("#ra-range", "all")
    page.select_option("#rb-range", "all")
    page.click("button:text-is('Compare')")
    page.wait_for_url("**/campaigns/compare?**")
    row = page.locator("tr[data-figure='delivery_rate']")
    assert row.get_attribute("data-better") == "b"
    assert row.locator("td.better").inner_text().lower() == "100.0% better"
    assert row.locator("td").nth(2).inner_text() == "+50.0 points"
    fits = page.evaluate(FITS_JS)
    assert fits[0] <= fits[1], fits


def test_the_list_refreshes_on_live_activity(page, live_server, api_token):
    page.goto("/campaigns?range=7d")
    page.wait_for_function("() => document.body.dataset.liveState === 'live'")
    assert page.locator("tr[data-tag='launch']").count() == 0
    answer = httpx.post(
        f"{live_server.url}/api/messages",
        json={"requestId": "L1", "phone": "79000000001", "text": "hi", "tags": ["launch"]},
        headers={"Authorization": f"Bearer {api_token}"},
        timeout=10,
    )
    assert answer.status_code in (200, 201), answer.text
    page.wait_for_selector("tr[data-tag='launch']", timeout=15000)
    assert page.inner_text("tr[data-tag='launch'] td[data-col='pending']") == "1"
    body = {**fixture_json("dr_success"), "requestId": "L1"}
    assert (
        httpx.post(f"{live_server.url}/webhooks/viber/dr", json=body, timeout=10).status_code == 200
    )
    page.wait_for_function(
        "() => document.querySelector(\"tr[data-tag='launch'] td[data-col='accepted']\")"
        ".textContent.trim() === '1'",
        timeout=15000,
    )


def load_campaigns(now) -> None:
    """Five campaigns of the last day with every outcome, cost and replies."""
    rnd = random.Random(11)
    count = 40 if SCREENSHOTS else 8
    for k, tag in enumerate(("spring-sale", "order-updates", "win-back", "newsletter", "vip")):
        for i in range(count):
            rid = f"{tag}-{i:03d}"
            start = now - timedelta(hours=20 - 3 * k, minutes=-i)
            phone = f"79{k}{i:08d}"
            register(start, rid, phone, tags=[tag])
            if rnd.random() < 0.05:
                continue
            cost = {"currency": "USD", "localPrice": 0.012, "originalPrice": 0.002}
            receipt(start + timedelta(seconds=1), rid, "success", cost=cost)
            roll = rnd.random()
            if roll < 0.1 + 0.05 * k:
                code = rnd.choice([11000, 9002, 1102])
                receipt(start + timedelta(seconds=4), rid, "failed", code=code)
                continue
            delivered = start + timedelta(seconds=2 + rnd.expovariate(1 / (5 + 10 * k)))
            receipt(delivered, rid, "delivered")
            if roll < 0.7:
                receipt(delivered + timedelta(seconds=rnd.expovariate(1 / 300)), rid, "seen")
                if rnd.random() < 0.2:
                    reply(delivered + timedelta(minutes=6), rid, phone, "thanks")


def test_screenshots(page, app, tmp_path):
    with app.app_context():
        load_campaigns(datetime.now(UTC))
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1366, "height": 900})
    page.goto("/campaigns?range=7d")
    assert page.locator("#campaigns-list tbody tr").count() == 5
    page.screenshot(path=str(folder / "campaigns.png"), full_page=True)
    page.goto("/campaigns/show?tag=spring-sale&range=7d")
    page.wait_for_function(
        "() => window.Chart && Chart.getChart(document.getElementById('chart-campaign'))"
    )
    page.screenshot(path=str(folder / "campaign.png"), full_page=True)
    assert (folder / "campaigns.png").stat().st_size > 10_000
