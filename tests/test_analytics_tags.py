"""Analytics filtered by tag (`?tag=`, repeatable: the messages with every one of the tags, as on
the messages page). The hourly rollups have no tag, so a tag filter reads the messages and their
message_tag rows; each number is checked against a count made here, in Python, from the rows of
the message, message_tag and reply tables."""

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from werkzeug.datastructures import MultiDict

from app.analytics.ranges import TimeRange
from app.analytics.report import rollup_plan
from app.dashboard.filters import MessageFilter
from app.records.models import Message, MessageTag, Reply, db
from support import bodies
from support.timed_ingest import receipt, receive_at, reply

START = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
TAGS = ("spring", "otp", "vip")
COST = {"currency": "USD", "localPrice": 0.25, "originalPrice": 0.03, "rateType": "Promotional"}
STEPS = {
    "pending": [],
    "success": ["success"],
    "delivered": ["success", "delivered"],
    "seen": ["success", "delivered", "seen"],
    "failed": ["success", "failed"],
    "expired": ["success", "expired"],
}

# A range shown per minute, one per hour with partial hours at both ends (which without a
# tag reads its whole hours from the rollups), and one per day.
RANGES = {
    "minute": ("2026-03-01T06:00", "2026-03-01T08:30"),
    "hour": ("2026-03-01T03:20", "2026-03-03T17:45"),
    "day": ("2026-02-20T00:00", "2026-03-25T00:00"),
}
FILTERS = [
    {"tag": ["spring"]},
    {"tag": ["SPRING", "vip"]},  # both, whatever the case
    {"tag": ["spring,otp"]},  # comma separated, as the form sends it
    {"tag": ["otp"], "status": ["failed", "expired"]},
    {"tag": ["vip"], "code": ["11000"]},
    {"tag": ["no-such-tag"]},
]


def load_tagged_traffic(seed: int = 7, count: int = 90) -> None:
    """Messages over three days through the real ingest: some registered with tags (a few get
    more tags from a later registration), some known only from their receipts, of every
    outcome, with cost and replies."""
    rng = random.Random(seed)
    for i in range(count):
        rid = f"{i:04d}tagged{rng.getrandbits(64):016x}"
        phone = f"7910000{i % 17:04d}"
        at = START + timedelta(minutes=rng.randrange(0, 3 * 24 * 60), seconds=rng.randrange(60))
        tags = rng.sample(TAGS, k=rng.choice((0, 1, 1, 2, 3)))
        registered = rng.random() < 0.85
        if registered:
            body = bodies.registration(rid, phone, f"text {i}", tags=tags)
            assert receive_at(at, "register", body).ok
        outcome = rng.choice(list(STEPS))
        t = at
        for n, step in enumerate(STEPS[outcome]):
            t += timedelta(seconds=rng.uniform(0.5, 400))
            code = rng.choice((11000, 9002)) if step == "failed" else None
            receipt(t, rid, step, code=code, cost=COST if n == 0 and rng.random() < 0.7 else None)
        if registered and rng.random() < 0.2:
            more = body | {"tags": [rng.choice(TAGS)]}  # tags only grow
            receive_at(t + timedelta(seconds=1), "register", more)
        if outcome in ("delivered", "seen") and rng.random() < 0.4:
            reply(t + timedelta(minutes=rng.randrange(1, 90)), rid, phone, f"thanks {i}")


def expected(rng: TimeRange, args: dict) -> dict:
    """The numbers for a range and a filter, counted here from the rows themselves."""
    want = {t.strip().lower() for value in args["tag"] for t in value.split(",")}
    statuses = set(args.get("status", ()))
    code = int(args["code"][0]) if "code" in args else None
    tags: dict[str, set] = {}
    for rid, tag in db.session.execute(db.select(MessageTag.request_id, MessageTag.tag)):
        tags.setdefault(rid, set()).add(tag)

    def matches(m: Message) -> bool:
        return (
            want <= tags.get(m.request_id, set())
            and (not statuses or (m.status or "pending") in statuses)
            and (code is None or m.code == code)
        )

    every = list(db.session.execute(db.select(Message)).scalars())
    matching = {m.request_id for m in every if matches(m)}
    cohort = [m for m in every if m.request_id in matching and rng.start <= m.created_at <= rng.end]
    funnel = {
        "messages": len(cohort),
        "pending": sum(m.status is None for m in cohort),
        "accepted": sum(m.status is not None for m in cohort),
        "delivered": sum(m.delivered_at is not None or m.seen_at is not None for m in cohort),
        "seen": sum(m.seen_at is not None for m in cohort),
        "failed": sum(m.status == "failed" for m in cohort),
        "expired": sum(m.status == "expired" for m in cohort),
    }
    failures = Counter((m.status, m.code) for m in cohort if m.status in ("failed", "expired"))
    cost = Counter()
    for m in cohort:
        if m.cost_currency is not None:
            cost[(m.cost_currency, m.cost_rate_type)] += 1
    latency = {
        key: sum(m.accepted_at is not None and getattr(m, column) is not None for m in cohort)
        for key, column in (("delivered", "delivered_at"), ("seen", "seen_at"))
    }
    replies = [
        r
        for r in db.session.execute(db.select(Reply)).scalars()
        if r.trace_request_id in matching and rng.start <= r.received_at <= rng.end
    ]
    return {
        "funnel": funnel,
        "failures": dict(failures),
        "cost": dict(cost),
        "latency": latency,
        "replies": len(replies),
        "local": round(sum(float(m.cost_local_price or 0) for m in cohort), 6),
    }


def as_found(data: dict) -> dict:
    groups = data["cost"]["groups"]
    return {
        "funnel": data["funnel"],
        "failures": {(f["status"], f["code"]): f["count"] for f in data["failures"]},
        "cost": {(g["currency"], g["rate_type"]): g["messages"] for g in groups},
        "latency": {key: data["latency"][key]["count"] for key in ("delivered", "seen")},
        "replies": data["replies"]["total"],
        "local": round(sum(g["local"] for g in groups), 6),
    }


@pytest.mark.parametrize("unit", list(RANGES))
def test_tag_filtered_numbers_equal_a_count_of_the_messages(app, client, unit):
    with app.app_context():
        load_tagged_traffic()
        assert db.session.execute(db.select(db.func.count()).select_from(MessageTag)).scalar()
    start, end = RANGES[unit]
    rng = TimeRange(
        "custom",
        "Custom",
        datetime.fromisoformat(start).replace(tzinfo=UTC),
        datetime.fromisoformat(end).replace(tzinfo=UTC),
    )
    assert rng.unit == unit
    seen_any = False
    for args in FILTERS:
        query = urlencode({"range": "custom", "start": start, "end": end, **args}, doseq=True)
        response = client.get(f"/analytics/data.json?{query}")
        assert response.status_code == 200, response.get_json()
        found = as_found(response.get_json())
        with app.app_context():
            # No rollup can answer a tag filter: the report reads the messages.
            assert rollup_plan(rng, MessageFilter.from_args(MultiDict(args))) is None
            want = expected(rng, args)
        assert found == want, (unit, args)
        seen_any = seen_any or want["funnel"]["messages"] > 0
    assert seen_any, "the traffic has tagged messages in the range"


def test_every_tag_must_match_as_on_the_messages_page(app, client):
    with app.app_context():
        for rid, tags in (("m1", ["spring"]), ("m2", ["spring", "vip"]), ("m3", ["vip"])):
            receive_at(START, "register", bodies.registration(rid, "7910", "hi", tags=tags))
    window = "range=custom&start=2026-02-28T00:00&end=2026-03-02T00:00"

    def counted(query):
        return client.get(f"/analytics/data.json?{window}&{query}").get_json()["funnel"]["messages"]

    assert counted("") == 3
    assert counted("tag=spring") == 2 and counted("tag=vip") == 2
    assert counted("tag=spring&tag=vip") == counted("tag=vip,spring") == 1
    listed = client.get("/?tag=spring&tag=vip").get_data(as_text=True)
    assert 'id="msg-m2"' in listed and 'id="msg-m1"' not in listed and 'id="msg-m3"' not in listed


def test_the_filter_form_has_a_tag_input_and_a_chip_per_tag(app, client):
    html = client.get("/analytics?tag=Spring&tag=vip").get_data(as_text=True)
    assert '<label for="an-tag">Tags</label>' in html
    assert 'id="an-tag" name="tag" value="spring, vip"' in html
    assert "tag: spring ×" in html and "tag: vip ×" in html
    # Removing one chip keeps the other.
    assert 'href="/analytics?tag=vip&amp;range=24h"' in html


@pytest.mark.parametrize(
    "tag, reason",
    [
        ("a,b,c,d,e,f", "a message has at most 5 tags, got 6"),
        ("x" * 129, "a tag is longer than 128 characters"),
    ],
)
def test_a_bad_tag_is_400_naming_it(client, tag, reason):
    for path in ("/analytics", "/analytics/data.json"):
        response = client.get(path, query_string={"tag": tag})
        assert response.status_code == 400
        assert response.get_json()["field"] == "tag"
        assert reason in response.get_json()["reason"]


def test_the_live_refresh_of_a_tag_filter_is_spaced_as_a_read_of_the_messages(client):
    html = client.get("/analytics?range=7d&tag=spring").get_data(as_text=True)
    assert 'data-refresh-gap="10"' in html


@pytest.mark.browser
@pytest.mark.parametrize("width, height", [(1366, 900), (390, 844)])
def test_typing_tags_in_the_filter_form_filters_the_report(page, app, width, height):
    with app.app_context():
        load_tagged_traffic()
        start, end = RANGES["hour"]
        rng = TimeRange(
            "custom",
            "Custom",
            datetime.fromisoformat(start).replace(tzinfo=UTC),
            datetime.fromisoformat(end).replace(tzinfo=UTC),
        )
        both = expected(rng, {"tag": ["spring", "vip"]})["funnel"]["messages"]
        every = expected(rng, {"tag": []})["funnel"]["messages"]
    assert 0 < both < every
    page.set_viewport_size({"width": width, "height": height})
    page.goto(f"/analytics?range=custom&start={start}&end={end}")
    funnel = page.locator("#analytics-report section[aria-labelledby=an-funnel-h] caption")
    assert funnel.inner_text() == f"{every} messages"
    tags = page.get_by_label("Tags", exact=True)
    box = tags.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= width
    tags.fill("Spring, VIP")
    with page.expect_response(lambda r: "/analytics?" in r.url and "tag=" in r.url):
        tags.press("Enter")
    page.wait_for_function(
        "n => document.querySelector('#analytics-report section[aria-labelledby=an-funnel-h] "
        "caption').innerText === n + ' messages'",
        arg=both,
    )
    assert parse_qs(urlsplit(page.url).query)["tag"] == ["Spring, VIP"], page.url
    page.reload()
    assert page.get_by_label("Tags", exact=True).input_value() == "spring, vip"
    assert funnel.inner_text() == f"{both} messages"
    fits = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert fits[0] <= fits[1], fits
