"""Analytics numbers against a hand-computed set of messages."""

from datetime import UTC, datetime, timedelta

import pytest

from app.analytics.ranges import RangeError, TimeRange, parse_range
from app.analytics.report import report
from app.dashboard.filters import MessageFilter
from support.analytics_data import HOUR, T0, load_fixture


@pytest.fixture
def data(app):
    with app.app_context():
        load_fixture()
        yield report(HOUR)


def test_funnel_counts_each_message_once(data):
    assert data["funnel"] == {
        "messages": 7,
        "pending": 1,
        "accepted": 6,
        "delivered": 3,
        "seen": 2,
        "failed": 2,
        "expired": 1,
    }


def test_rates_per_minute_bucket_of_first_heard(data):
    rates = data["rates"]
    assert data["range"]["unit"] == "minute"
    assert len(rates["labels"]) == 61
    assert rates["labels"][0] == "2026-03-01 12:00" and rates["labels"][-1] == "2026-03-01 13:00"
    series = rates["series"]
    nonzero = {rates["labels"][i][-5:]: n for i, n in enumerate(series["messages"]) if n}
    assert nonzero == {
        "12:00": 1,
        "12:05": 1,
        "12:10": 1,
        "12:20": 1,
        "12:30": 1,
        "12:35": 1,
        "12:50": 1,
    }
    for key, total in data["funnel"].items():
        assert sum(series[key]) == total
    i = rates["labels"].index("2026-03-01 12:05")
    assert series["delivered"][i] == 1 and series["failed"][i] == 0
    assert series["pending"][rates["labels"].index("2026-03-01 12:50")] == 1


def test_latency_percentiles_and_histogram(data):
    delivered = data["latency"]["delivered"]
    # Values 0 (out of order, clamped), 3, 30.
    assert delivered["count"] == 3
    assert (delivered["p50"], delivered["p90"], delivered["p99"]) == (3.0, 30.0, 30.0)
    bars = {b["label"]: b["count"] for b in delivered["histogram"] if b["count"]}
    assert bars == {"< 1s": 1, "2s–5s": 1, "30s–1min": 1}
    seen = data["latency"]["seen"]
    # Values 60 and 119, both in one histogram bucket.
    assert seen["count"] == 2
    assert (seen["p50"], seen["p90"], seen["p99"]) == (60.0, 119.0, 119.0)
    assert {b["label"]: b["count"] for b in seen["histogram"] if b["count"]} == {"1min–2min": 2}


def test_failures_by_code_with_code_table(data):
    rows = [(f["status"], f["code"], f["count"]) for f in data["failures"]]
    assert rows == [("expired", 11003, 1), ("failed", 9002, 1), ("failed", 11000, 1)]
    phone = data["failures"][1]
    assert phone["message"] == "Phone number error"
    assert phone["solution"] == "Invalid phone number, please check the correctness of the number"
    assert phone["share"] == 33.3


def test_cost_once_per_message_per_currency_and_rate_type(data):
    groups = {(g["currency"], g["rate_type"]): g for g in data["cost"]["groups"]}
    assert set(groups) == {("EUR", "Promotional"), ("USD", "Transactional")}
    usd = groups[("USD", "Transactional")]
    assert (usd["messages"], usd["local"], usd["original"]) == (2, 2.0, 0.3)
    eur = groups[("EUR", "Promotional")]
    assert (eur["messages"], eur["local"], eur["original"]) == (1, 2.0, 0.3)
    labels = data["cost"]["labels"]
    assert usd["series"][labels.index("2026-03-01 12:00")] == 1.5
    assert usd["series"][labels.index("2026-03-01 12:05")] == 0.5
    assert sum(usd["series"]) == 2.0


def test_replies_over_time_and_top_phones(data):
    replies = data["replies"]
    assert replies["total"] == 4
    assert sum(replies["counts"]) == 4
    assert replies["top_phones"] == [
        {"phone": "100", "count": 2},
        {"phone": "300", "count": 1},
        {"phone": "800", "count": 1},
    ]


def test_criteria_narrow_every_section(app):
    with app.app_context():
        load_fixture()
        failed = report(HOUR, MessageFilter(status=("failed",)))
    assert failed["funnel"]["messages"] == 2 and failed["funnel"]["failed"] == 2
    assert [f["code"] for f in failed["failures"]] == [9002, 11000]
    assert failed["replies"]["top_phones"] == [{"phone": "300", "count": 1}]
    assert failed["latency"]["delivered"]["count"] == 0
    assert failed["latency"]["delivered"]["p50"] is None


def test_empty_range(app):
    with app.app_context():
        empty = report(TimeRange("custom", "Custom", T0, T0 + timedelta(days=2)))
    assert empty["funnel"]["messages"] == 0
    assert empty["range"]["unit"] == "hour" and len(empty["rates"]["labels"]) == 49
    assert empty["failures"] == [] and empty["cost"]["groups"] == []


def test_parse_range():
    now = T0
    assert parse_range({}, now).start == now - timedelta(days=1)
    assert parse_range({"range": "1h"}, now).unit == "minute"
    assert parse_range({"range": "7d"}, now).unit == "hour"
    assert parse_range({"range": "30d"}, now).unit == "day"
    custom = parse_range(
        {"range": "custom", "start": "2026-02-01T00:00", "end": "2026-02-03T00:00"}, now
    )
    assert custom.start == datetime(2026, 2, 1, tzinfo=UTC) and custom.unit == "hour"
    for args, field in (
        ({"range": "2h"}, "range"),
        ({"range": "custom"}, "start"),
        ({"range": "custom", "start": "yesterday"}, "start"),
        ({"range": "custom", "start": "2026-02-03", "end": "2026-02-01"}, "end"),
    ):
        with pytest.raises(RangeError) as exc:
            parse_range(args, now)
        assert exc.value.field == field


CUSTOM = "range=custom&start=2026-03-01T12:00&end=2026-03-01T13:00"


def test_page_renders_numbers_charts_and_data_block(app, client):
    with app.app_context():
        load_fixture()
    response = client.get(f"/analytics?{CUSTOM}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for chart in (
        "funnel",
        "rates",
        "latency-delivered",
        "latency-seen",
        "failures",
        "cost",
        "replies",
    ):
        assert f'<canvas id="chart-{chart}"' in html
    assert '<script type="application/json" id="analytics-data">' in html
    assert 'data-percentile="seen-p90">1 min 59 s<' in html
    assert '<tr data-stage="delivered"><th scope="row">Delivered</th><td>3</td>' in html
    # No executable inline script and no inline style: the page runs under a strict CSP.
    assert "<script>" not in html and 'style="' not in html
    assert "/static/vendor/chart-4.6.1.umd.min.js" in html and "/static/analytics.js" in html
    assert "Invalid phone number, please check the correctness of the number" in html


def test_fragment_for_htmx_and_json(app, client):
    with app.app_context():
        load_fixture()
    fragment = client.get(f"/analytics?{CUSTOM}&status=failed", headers={"HX-Request": "true"})
    html = fragment.get_data(as_text=True)
    assert html.lstrip().startswith("{#") is False and 'id="analytics-report"' in html
    assert "<html" not in html
    data = client.get(f"/analytics/data.json?{CUSTOM}&status=failed").get_json()
    assert data["funnel"]["messages"] == 2
    assert data["funnel"] == report_for(app, MessageFilter(status=("failed",)))["funnel"]


def report_for(app, criteria):
    with app.app_context():
        return report(HOUR, criteria)


def test_failure_rows_link_to_the_filtered_messages(app, client):
    with app.app_context():
        load_fixture()
    data = client.get(f"/analytics?{CUSTOM}&phone=1")
    html = data.get_data(as_text=True)
    assert data.status_code == 200
    full = client.get(f"/analytics?{CUSTOM}").get_data(as_text=True)
    assert (
        'href="/messages?status=failed&amp;code=9002&amp;from=2026-03-01"' in full
        or 'href="/?status=failed&amp;code=9002&amp;from=2026-03-01"' in full
    )
    assert "No failed or expired messages." in html  # phone 1xx: only A, which did not fail


def test_filter_values_are_escaped(app, client):
    response = client.get("/analytics?phone=<script>alert(1)</script>")
    assert response.status_code == 200
    assert "<script>alert(1)" not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    "query,field",
    [
        ("range=5y", "range"),
        ("range=custom", "start"),
        ("range=custom&start=2026-03-02&end=2026-03-01", "end"),
        ("status=bogus", "status"),
        ("code=abc", "code"),
    ],
)
def test_bad_arguments_are_400_naming_the_field(client, query, field):
    for path in ("/analytics", "/analytics/data.json"):
        response = client.get(f"{path}?{query}")
        assert response.status_code == 400
        assert response.get_json()["field"] == field


def test_live_refresh_spacing_follows_the_cost_of_the_report(client):
    def gap(query):
        html = client.get(f"/analytics?{query}").get_data(as_text=True)
        return html.split('data-refresh-gap="', 1)[1].split('"', 1)[0]

    # From the rollups any range is cheap; read message by message, a month is not.
    assert gap("range=30d") == gap("range=7d&status=failed") == gap("range=1h") == "3"
    assert gap("range=7d&phone=79") == "10" and gap("range=30d&q=abc") == "60"


def test_replies_counted_per_bucket_equal_the_grouped_count(app):
    """Replies of a range with no filter are counted bucket by bucket over the index; the
    counts equal grouping every reply by its bucket, at the edges of buckets and of the range
    too, for ranges shown per minute, hour and day."""
    from app.analytics.report import (
        _reply_counts,
        _reply_counts_grouped,
        _reply_counts_truncated,
    )
    from app.analytics.sql import bucket_labels, dialect
    from support.timed_ingest import reply

    day = datetime(2026, 4, 1, tzinfo=UTC)
    moments = [
        day - timedelta(microseconds=1),
        day,
        day + timedelta(minutes=7, seconds=30),
        day + timedelta(hours=1),
        day + timedelta(hours=1) - timedelta(microseconds=1),
        day + timedelta(days=1),
        day + timedelta(days=2, hours=5, microseconds=7),
        day + timedelta(days=9, hours=23, minutes=59, seconds=59),
        day + timedelta(days=10),
    ]
    ranges = [
        TimeRange("custom", "Custom", day, day + timedelta(hours=1)),  # per minute
        TimeRange("custom", "Custom", day + timedelta(minutes=7), day + timedelta(days=2)),
        TimeRange(
            "custom", "Custom", day - timedelta(hours=3, minutes=1), day + timedelta(days=10)
        ),
        TimeRange("custom", "Custom", day + timedelta(days=20), day + timedelta(days=40)),
    ]
    with app.app_context():
        for n, moment in enumerate(moments):
            reply(moment, f"R{n}", f"9{n}", f"text {n}")
        for rng in ranges:
            labels = bucket_labels(rng.start, rng.end, rng.unit)
            counted = _reply_counts(rng)
            assert counted == _reply_counts_grouped(rng, labels), rng
            if dialect() == "postgresql":
                assert counted == _reply_counts_truncated(rng, labels), rng
            assert len(counted) == len(labels)
            assert report(rng)["replies"]["counts"] == counted
        assert sum(_reply_counts(ranges[2])) == len(moments)  # both ends inclusive
        assert sum(_reply_counts(ranges[3])) == 0


def test_top_phones_load_after_the_page(app, client):
    with app.app_context():
        load_fixture()
    html = client.get(f"/analytics?{CUSTOM}&status=failed").get_data(as_text=True)
    table = html.split('id="an-top-phones"', 1)[1].split("</table>", 1)[0]
    assert 'hx-trigger="load"' in table and 'aria-busy="true"' in table and "Loading" in table
    url = table.split('hx-get="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert url.startswith("/analytics/top-phones?") and "status=failed" in url
    assert "start=2026-03-01T12%3A00" in url or "start=2026-03-01T12:00" in url
    loaded = client.get(url).get_data(as_text=True)
    assert 'id="an-top-phones"' in loaded and "hx-get" not in loaded
    assert '<th scope="row">300</th><td>1</td>' in loaded  # the failed message's replier
    assert "100" not in loaded.split("<tbody>", 1)[1]
    everyone = client.get(f"/analytics/top-phones?{CUSTOM}").get_data(as_text=True)
    rows = everyone.split("<tbody>", 1)[1]
    assert rows.index(">100<") < rows.index(">300<") < rows.index(">800<")
    # The JSON keeps them.
    data = client.get(f"/analytics/data.json?{CUSTOM}").get_json()
    assert data["replies"]["top_phones"][0] == {"phone": "100", "count": 2}
    nothing = client.get(
        "/analytics/top-phones?range=custom&start=2020-01-01T00:00&end=2020-01-02T00:00"
    )
    assert "No replies." in nothing.get_data(as_text=True)
    assert client.get("/analytics/top-phones?range=5y").get_json()["field"] == "range"
