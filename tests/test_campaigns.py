"""Campaigns: the rollups per tag kept at ingest equal a recount from the messages, the
figures equal hand-counted and independently counted numbers, and the pages answer every
range, sort and comparison (and refuse bad ones, naming the argument)."""

import json
import random
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func

from app.campaigns import report
from app.ops.maintenance import recount_differences
from app.records import tag_rollup
from app.records.models import Message, MessageTag, TagDay, db
from support.timed_ingest import receipt, register, reply

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DAY = "2026-03-01..2026-03-01"
USD = {"currency": "USD", "localPrice": 1.5, "originalPrice": 0.2, "rateType": "Transactional"}


def at(minutes: int, seconds: int = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def load():
    """Five messages; the comments give what each adds to the expected numbers."""
    # A (promo, vip): success with cost, delivered 3 s later, seen 60 s after success; a reply.
    register(at(0), "A", "100", tags=["Promo", "vip"])
    receipt(at(0, 2), "A", "success", cost=USD)
    receipt(at(0, 5), "A", "delivered")
    receipt(at(1, 2), "A", "seen")
    reply(at(2), "A", "100", "thanks")
    reply(at(3), "A", "100", "again")
    # B (promo): failed 11000.
    register(at(5), "B", "200", tags=["promo"])
    receipt(at(5, 1), "B", "success")
    receipt(at(5, 9), "B", "failed", code=11000, message="Failed")
    # C (promo): registered, no receipt yet: pending.
    register(at(6), "C", "300", tags="promo")
    # D: receipts first (success, delivered after 10 s), then a registration tags it promo,
    # and a later one adds "late" (tags only grow).
    receipt(at(7), "D", "success")
    receipt(at(7, 10), "D", "delivered")
    register(at(8), "D", "400", tags=["promo"])
    register(at(9), "D", "400", tags=["late"])
    # E (other): the next day, delivered.
    register(at(24 * 60), "E", "500", tags=["other"])
    receipt(at(24 * 60, 1), "E", "success")
    receipt(at(24 * 60, 4), "E", "delivered")
    # F: untagged, counts in no campaign.
    receipt(at(10), "F", "success")


def kept_rows() -> dict:
    """What the three tag rollups hold now (rows that count something), by table."""
    out = {}
    for model in tag_rollup.TABLES:
        columns = [c.name for c in model.__table__.columns]
        out[model.__tablename__] = {
            tuple(getattr(r, c) for c in columns)
            for r in db.session.execute(db.select(model)).scalars()
            if r.n
        }
    return out


def independent_count(tag: str, start: datetime, stop: datetime) -> dict:
    """The campaign's counts straight from the messages, in SQL, without the rollups."""
    m = Message
    tagged = (
        db.select(m)
        .join(MessageTag, MessageTag.request_id == m.request_id)
        .where(MessageTag.tag == tag, m.created_at >= start, m.created_at < stop)
        .subquery()
    )
    row = db.session.execute(
        db.select(
            func.count(),
            func.sum(db.case((tagged.c.status.is_(None), 1), else_=0)),
            func.sum(
                db.case(
                    (db.or_(tagged.c.delivered_at.isnot(None), tagged.c.seen_at.isnot(None)), 1),
                    else_=0,
                )
            ),
            func.sum(db.case((tagged.c.seen_at.isnot(None), 1), else_=0)),
            func.sum(db.case((tagged.c.status == "failed", 1), else_=0)),
            func.sum(db.case((tagged.c.status == "expired", 1), else_=0)),
            func.sum(db.case((tagged.c.replies_count > 0, 1), else_=0)),
            func.coalesce(func.sum(tagged.c.replies_count), 0),
        )
    ).one()
    names = ("messages", "pending", "delivered", "seen", "failed", "expired", "replied", "replies")
    return {name: int(v or 0) for name, v in zip(names, row, strict=True)}


def figures(c: report.Campaign) -> dict:
    return {
        name: getattr(c, name)
        for name in ("messages", "pending", "delivered", "seen", "failed", "expired", "replied")
    } | {"replies": c.replies}


def test_a_campaign_equals_the_hand_count_and_an_independent_count(app):
    with app.app_context():
        load()
        day = report.parse_range(DAY, T0)
        promo = report.campaign("promo", day)
        assert figures(promo) == {
            "messages": 4,
            "pending": 1,
            "delivered": 2,
            "seen": 1,
            "failed": 1,
            "expired": 0,
            "replied": 1,
            "replies": 2,
        }
        assert promo.accepted == 3
        assert promo.delivery_rate == 0.5 and promo.seen_rate == 0.5 and promo.reply_rate == 0.25
        # To delivered: A 3 s, D 10 s; to seen: A 60 s (each exact: the least or greatest of
        # its bin).
        assert promo.latency == {
            "p50_delivered": 3.0,
            "p90_delivered": 10.0,
            "p50_seen": 60.0,
            "p90_seen": 60.0,
        }
        assert promo.costs == {"USD": [1, 1.5, 0.2]}
        assert promo.top_failures() == [
            {
                "status": "failed",
                "code": 11000,
                "count": 1,
                "message": promo.top_failures()[0]["message"],
            }
        ]
        for tag in ("promo", "vip", "late", "other"):
            for rng in (day, report.parse_range("all", T0)):
                start = rng.start or datetime(1970, 1, 1, tzinfo=UTC)
                stop = rng.stop or datetime(9999, 1, 1, tzinfo=UTC)
                assert figures(report.campaign(tag, rng)) == independent_count(tag, start, stop)
        everything = report.campaigns(report.parse_range("all", T0))
        assert sorted(everything) == ["late", "other", "promo", "vip"]
        assert everything["other"].messages == 1 and "other" not in report.campaigns(day)
        assert recount_differences() == []


def test_tag_rollups_kept_at_ingest_equal_a_rebuild_whatever_the_order(app):
    """Registrations with tags, receipts and replies in a random order, with repeats: the
    rows kept at ingest are the rows a recount from the messages writes."""
    rnd = random.Random(7)
    with app.app_context():
        events = []
        for i in range(60):
            rid = f"R{i}"
            tags = rnd.sample(["a", "b", "c", "d"], rnd.randint(0, 2))
            events.append(("register", rid, tags))
            if rnd.random() < 0.5:
                events.append(("register", rid, rnd.sample(["e", "f"], 1)))
            for status in rnd.sample(["success", "delivered", "seen", "failed", "expired"], 3):
                events.append(("receipt", rid, status))
            if rnd.random() < 0.3:
                events.append(("reply", rid, None))
        rnd.shuffle(events)
        events += rnd.sample(events, 20)  # repeats
        for n, (kind, rid, extra) in enumerate(events):
            when = T0 + timedelta(seconds=n * 37)
            if kind == "register":
                register(when, rid, "7" + rid[1:], tags=extra)
            elif kind == "receipt":
                receipt(when, rid, extra, code=0 if extra != "failed" else 11000)
            else:
                reply(when, rid, "7" + rid[1:], f"hi {n}")
        assert recount_differences() == []
        before = kept_rows()
        assert all(before.values())
        tag_rollup.rebuild()
        rebuilt = kept_rows()
        # Equal, but for latency bounds: one taken away does not narrow a bin at ingest.
        assert rebuilt["tag_day"] == before["tag_day"] and rebuilt["tag_hour"] == before["tag_hour"]
        assert {r[:5] for r in rebuilt["tag_latency"]} == {r[:5] for r in before["tag_latency"]}
        assert recount_differences() == []


def test_recount_check_finds_a_tag_rollup_that_drifted(app):
    with app.app_context():
        load()
        row = db.session.execute(db.select(TagDay).where(TagDay.tag == "vip")).scalars().first()
        row.n += 1
        db.session.commit()
        found = recount_differences()
        assert found and all(line.startswith("tag_day") for line in found)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["recount", "--check"])
    assert result.exit_code == 1 and "tag_day" in result.output
    result = runner.invoke(args=["recount"])
    assert result.exit_code == 0 and "tag rollup rows" in result.output
    assert runner.invoke(args=["recount", "--check"]).exit_code == 0


@pytest.fixture
def loaded(app):
    app.config["ANALYTICS_CLOCK"] = lambda: T0 + timedelta(days=1, hours=1)
    with app.app_context():
        load()
    return app


def test_campaigns_page_lists_every_tag_with_its_figures(loaded, client):
    page = client.get("/campaigns?range=7d")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for tag in ("promo", "vip", "late", "other"):
        assert f'data-tag="{tag}"' in html
    assert 'href="/campaigns"' in client.get("/").get_data(as_text=True)
    data = client.get("/campaigns?range=all", headers={"Accept": "application/json"}).get_json()
    promo = next(c for c in data["campaigns"] if c["tag"] == "promo")
    assert promo["messages"] == 4 and promo["delivery_rate"] == 0.5
    assert promo["cost_per_currency"] == [
        {"currency": "USD", "messages": 1, "local": 1.5, "original": 0.2}
    ]
    assert promo["top_failures"][0]["code"] == 11000


@pytest.mark.parametrize("column", list(report.COLUMNS))
def test_the_list_sorts_by_every_column_both_ways(loaded, client, column):
    orders = []
    for direction in ("asc", "desc"):
        data = client.get(
            f"/campaigns?range=all&sort={column}&dir={direction}",
            headers={"Accept": "application/json"},
        ).get_json()
        rows = data["campaigns"]
        values = [r[column] for r in rows]
        known = [v for v in values if v is not None]
        assert known == sorted(known, reverse=direction == "desc")
        # Campaigns without the figure come last either way.
        assert values == known + [None] * (len(values) - len(known))
        orders.append([r["tag"] for r in rows])
        html = client.get(f"/campaigns?range=all&sort={column}&dir={direction}")
        assert html.status_code == 200
        wanted = "descending" if direction == "desc" else "ascending"
        assert f'aria-sort="{wanted}"' in html.get_data(as_text=True)
    assert sorted(orders[0]) == sorted(orders[1]) == ["late", "other", "promo", "vip"]


def test_a_campaign_page_shows_its_funnel_over_time(loaded, client):
    data = client.get(
        f"/campaigns/show?tag=PROMO&range={DAY}", headers={"Accept": "application/json"}
    ).get_json()
    assert data["campaign"]["messages"] == 4
    funnel = data["funnel"]
    # From the campaign's first to its last hour with messages: here one hour.
    assert funnel["unit"] == "hour" and funnel["labels"] == ["2026-03-01 12:00"]
    noon = 0
    assert {k: v[noon] for k, v in funnel["series"].items()} == {
        "messages": 4,
        "accepted": 3,
        "delivered": 2,
        "seen": 1,
        "replied": 1,
    }
    assert sum(sum(v) for v in funnel["series"].values()) == 11
    page = client.get("/campaigns/show?tag=promo&range=all")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="chart-campaign"' in html and 'href="/?tag=promo"' in html
    nothing = client.get(
        "/campaigns/show?tag=never-used&range=all", headers={"Accept": "application/json"}
    )
    assert nothing.status_code == 200 and nothing.get_json()["campaign"]["messages"] == 0


def test_compare_two_campaigns_and_one_over_two_ranges(loaded, client):
    data = client.get(
        "/campaigns/compare?a=promo&b=other&ra=all", headers={"Accept": "application/json"}
    ).get_json()
    rows = {r["name"]: r for r in data["compared"]}
    assert rows["messages"]["a"] == 4 and rows["messages"]["b"] == 1
    assert rows["delivery_rate"] == {**rows["delivery_rate"], "a": 0.5, "b": 1.0, "better": "b"}
    assert rows["failed"]["better"] == "b" and rows["pending"]["better"] is None
    page = client.get("/campaigns/compare?a=promo&b=other&ra=all").get_data(as_text=True)
    assert 'data-figure="delivery_rate" data-better="b"' in page
    # One tag over two ranges: the first day against the second (nothing of promo there).
    data = client.get(
        "/campaigns/compare?a=promo&ra=custom&ra_from=2026-03-01&ra_to=2026-03-01"
        "&rb=2026-03-02..2026-03-02",
        headers={"Accept": "application/json"},
    ).get_json()
    assert data["a"]["campaign"]["tag"] == data["b"]["campaign"]["tag"] == "promo"
    assert data["a"]["campaign"]["messages"] == 4 and data["b"]["campaign"]["messages"] == 0


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/campaigns?range=8d", "range"),
        ("/campaigns?range=2026-03-02..2026-03-01", "range"),
        ("/campaigns?range=0001-01-01..0001-01-02", "range"),
        ("/campaigns?range=2020-01-01..2026-01-01", "range"),
        ("/campaigns?range=custom", "range_from"),
        ("/campaigns?range=" + "9" * 100, "range"),
        ("/campaigns?sort=nope", "sort"),
        ("/campaigns?dir=up", "dir"),
        ("/campaigns/show", "tag"),
        ("/campaigns/show?tag=" + "x" * 129, "tag"),
        ("/campaigns/show?tag=a%01b", "tag"),
        ("/campaigns/compare?b=promo", "a"),
        ("/campaigns/compare?a=promo&rb=99999-01-01..99999-01-02", "rb"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(loaded, client, url, field):
    answer = client.get(url, headers={"Accept": "application/json"})
    assert answer.status_code == 400
    assert answer.get_json()["field"] == field
    page = client.get(url)
    assert page.status_code == 400 and field in page.get_data(as_text=True)


def test_a_hostile_tag_is_shown_as_text(app, client):
    with app.app_context():
        register(T0, "X", "1", tags=['<script>alert(1)</script>"'])
    html = client.get("/campaigns?range=all").get_data(as_text=True)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = client.get("/campaigns/show?tag=%3Cscript%3Ealert(1)%3C/script%3E%22&range=all")
    assert page.status_code == 200 and "<script>alert(1)" not in page.get_data(as_text=True)
    assert (
        json.loads(client.get("/campaigns?range=all", headers={"Accept": "application/json"}).data)[
            "campaigns"
        ][0]["tag"]
        == '<script>alert(1)</script>"'
    )


def test_campaigns_need_a_signed_in_session(loaded, anon_client):
    for url in ("/campaigns", "/campaigns/show?tag=promo", "/campaigns/compare?a=promo"):
        answer = anon_client.get(url)
        assert answer.status_code in (302, 401)


def test_the_list_pages_by_50_with_each_shown_campaigns_latency(app, client):
    app.config["ANALYTICS_CLOCK"] = lambda: T0 + timedelta(hours=1)
    with app.app_context():
        for i in range(60):
            rid = f"P{i:02d}"
            register(at(i % 50), rid, f"5{i:03d}", tags=[f"c{i:02d}"])
            receipt(at(i % 50, 1), rid, "success")
            receipt(at(i % 50, 1 + i % 7), rid, "delivered")
    first = client.get("/campaigns?range=1d&sort=tag&dir=asc").get_data(as_text=True)
    assert first.count('<tr data-tag="') == 50 and "60 campaigns, 1–50 shown" in first
    assert 'data-tag="c49"' in first and 'data-tag="c50"' not in first
    second = client.get("/campaigns?range=1d&sort=tag&dir=asc&page=2").get_data(as_text=True)
    assert second.count('<tr data-tag="') == 10 and "51–60 shown" in second
    # The latency of the campaigns on the page is there (c59 was delivered 3 s after success).
    row = second[second.index('data-tag="c59"') :]
    assert '<td class="num" data-col="p50_delivered">3.0 s</td>' in row[: row.index("</tr>")]
    # Sorted by a latency, every campaign's is computed before the page is cut.
    by_latency = client.get("/campaigns?range=1d&sort=p50_delivered&dir=asc").get_data(as_text=True)
    values = re.findall(r'data-col="p50_delivered">([\d.]+) s<', by_latency)
    assert len(values) == 50 and values == sorted(values, key=float) and values[0] == "0.0"
    last = client.get("/campaigns?range=1d&sort=p50_delivered&dir=asc&page=2").get_data(
        as_text=True
    )
    assert 'data-tag="c06"' in last  # 6 s: among the slowest, on the last page
    bad = client.get("/campaigns?page=0", headers={"Accept": "application/json"})
    assert bad.status_code == 400 and bad.get_json()["field"] == "page"
    # A page past the last shows the last.
    assert "51–60 shown" in client.get("/campaigns?range=1d&sort=tag&page=9").get_data(as_text=True)
