"""Messages page: filters, keyset pages, counters, fragments; message page; rejected bodies."""

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import pytest

from app import ingest
from app.dashboard import listing
from app.dashboard.filters import FilterError, MessageFilter
from app.records import tally
from app.records.models import Message, MessageTally, RawBody, db
from support import bodies
from support.dashboard_data import message_with, post, receipt, register, reply, set_activity

ROW_RE = re.compile(r'<tr id="msg-([^"]+)" data-status="([^"]+)"[^>]*>')


def rows(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    return ROW_RE.findall(response.get_data(as_text=True)) and [
        rid for rid, _ in ROW_RE.findall(response.get_data(as_text=True))
    ]


def ids(client, query: str = "") -> list[str]:
    return rows(client.get("/" + query)) or []


def link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]+)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


@pytest.fixture
def mixed(client, app):
    """Eight messages, oldest first: every status, phones, codes, an anomaly, a pending one."""
    message_with(client, "aaa-success", "success", phone="79100000001")
    message_with(client, "bbb-delivered", "delivered", phone="79100000002")
    message_with(client, "ccc-seen", "seen", phone="79200000003")
    message_with(client, "ddd-failed", "failed", phone="79200000004", code=9002)
    message_with(client, "eee-expired", "expired", phone="79300000005")
    message_with(client, "fff-pending", None, phone="79300000006")
    message_with(client, "ggg-anomaly", "seen", phone="79100000007")
    receipt(client, "ggg-anomaly", "failed", code=9001)  # failed beside seen: flagged
    message_with(client, "hhh-nophone", "failed", code=9001)
    return client


def test_empty_dashboard_shows_the_webhook_urls(client):
    page = client.get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "No messages yet" in html
    assert "http://localhost/webhooks/viber/dr" in html
    assert "http://localhost/webhooks/viber/message" in html
    assert ROW_RE.search(html) is None


def test_rows_newest_activity_first_with_one_partial(mixed):
    html = mixed.get("/").get_data(as_text=True)
    found = ROW_RE.findall(html)
    assert [rid for rid, _ in found] == [
        "hhh-nophone",
        "ggg-anomaly",
        "fff-pending",
        "eee-expired",
        "ddd-failed",
        "ccc-seen",
        "bbb-delivered",
        "aaa-success",
    ]
    assert dict(found)["fff-pending"] == "pending"
    assert dict(found)["ggg-anomaly"] == "seen"
    assert 'id="messages-body"' in html and 'id="counters"' in html
    # The code's meaning on hover, the full id shown, a copy button.
    assert 'title="Phone number error: Invalid phone number' in html
    assert ">ddd-failed</a>" in html and 'data-copy="ddd-failed"' in html


@pytest.mark.parametrize(
    "query,expected",
    [
        ("?status=seen", ["ggg-anomaly", "ccc-seen"]),
        ("?status=failed&status=expired", ["hhh-nophone", "eee-expired", "ddd-failed"]),
        ("?status=pending", ["fff-pending"]),
        ("?status=pending,success", ["fff-pending", "aaa-success"]),
        ("?phone=79200000003", ["ccc-seen"]),
        ("?phone=791", ["ggg-anomaly", "bbb-delivered", "aaa-success"]),
        ("?phone=7910000000", ["ggg-anomaly", "bbb-delivered", "aaa-success"]),
        ("?code=9002", ["ddd-failed"]),
        ("?code=9001", ["hhh-nophone"]),
        ("?q=ccc", ["ccc-seen"]),
        ("?q=eee-expired", ["eee-expired"]),
        ("?anomaly=1", ["ggg-anomaly"]),
        ("?status=seen&phone=791", ["ggg-anomaly"]),
        ("?status=failed&code=9001", ["hhh-nophone"]),
        ("?status=seen&anomaly=1&phone=7910", ["ggg-anomaly"]),
        ("?phone=793&status=pending&status=expired", ["fff-pending", "eee-expired"]),
        ("?q=zzz", []),
        ("?phone=79100000002&status=seen", []),
    ],
)
def test_each_filter_alone_and_combined(mixed, query, expected):
    assert ids(mixed, query) == expected


def test_date_filters_use_utc_days_of_last_activity(mixed, app):
    day = datetime(2024, 5, 10, tzinfo=UTC)
    set_activity(
        app,
        {
            "aaa-success": day + timedelta(hours=1),
            "bbb-delivered": day + timedelta(days=1),
            "ccc-seen": day + timedelta(days=2, hours=23, minutes=59),
        },
    )
    assert ids(mixed, "?from=2024-05-11") == [
        "hhh-nophone",
        "ggg-anomaly",
        "fff-pending",
        "eee-expired",
        "ddd-failed",
        "ccc-seen",
        "bbb-delivered",
    ]
    assert ids(mixed, "?to=2024-05-11") == ["bbb-delivered", "aaa-success"]
    assert ids(mixed, "?from=2024-05-10&to=2024-05-12") == [
        "ccc-seen",
        "bbb-delivered",
        "aaa-success",
    ]
    assert ids(mixed, "?from=2024-05-12&to=2024-05-12&status=seen") == ["ccc-seen"]
    counters = mixed.get("/?from=2024-05-10&to=2024-05-12").get_data(as_text=True)
    assert re.search(r"<dt>Messages</dt><dd>3</dd>", counters)


@pytest.mark.parametrize(
    "query,field",
    [
        ("?status=read", "status"),
        ("?code=abc", "code"),
        ("?from=31-05-2024", "from"),
        ("?from=2024-05-02&to=2024-05-01", "to"),
        ("?size=7", "size"),
        ("?after=!!!", "after"),
        ("?before=bm90IGEgY3Vyc29y", "before"),
    ],
)
def test_bad_filter_is_a_clear_400(mixed, query, field):
    page = mixed.get("/" + query)
    assert page.status_code == 400
    assert f"{field}:" in page.get_data(as_text=True)


def test_active_filters_are_shown_and_removable_one_by_one(mixed):
    html = mixed.get("/?status=seen&phone=79&anomaly=1").get_data(as_text=True)
    chips = dict(
        (label, href.replace("&amp;", "&"))
        for href, label in re.findall(
            r'<a class="chip" href="([^"]+)"[^>]*aria-label="Remove filter ([^"]+)"', html
        )
    )
    assert set(chips) == {"status: seen", "phone: 79", "anomalies only"}
    assert chips["anomalies only"] == "/?status=seen&phone=79"
    assert ids(mixed, chips["anomalies only"][1:]) == ["ggg-anomaly", "ccc-seen"]
    assert chips["status: seen"] == "/?phone=79&anomaly=1"
    assert chips["phone: 79"] == "/?status=seen&anomaly=1"
    # The form keeps what is active.
    assert 'name="phone" type="search" inputmode="tel" value="79"' in html
    assert re.search(r'value="seen" checked', html)


def test_filter_survives_in_export_link_and_pager(mixed):
    html = mixed.get("/?status=seen&phone=791").get_data(as_text=True)
    export = re.search(r'id="export-link" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert export == "/export.csv?status=seen&phone=791"


def test_fragment_versus_full_page(mixed):
    full = mixed.get("/?status=seen").get_data(as_text=True)
    assert full.lstrip().startswith("<!doctype html>") and 'id="filters"' in full
    results = mixed.get("/?status=seen", headers={"HX-Request": "true", "HX-Target": "results"})
    body = results.get_data(as_text=True)
    assert results.status_code == 200
    assert "<html" not in body and 'id="filters"' not in body
    assert 'id="counters"' in body and 'id="messages-body"' in body
    assert [r for r, _ in ROW_RE.findall(body)] == ["ggg-anomaly", "ccc-seen"]
    panel = mixed.get("/?status=seen", headers={"HX-Request": "true", "HX-Target": "panel"})
    panel_body = panel.get_data(as_text=True)
    assert (
        "<html" not in panel_body and 'id="filters"' in panel_body and 'id="results"' in panel_body
    )
    # A history restore after a cache miss needs the whole page.
    restore = mixed.get(
        "/?status=seen", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    )
    assert "<!doctype html>" in restore.get_data(as_text=True)


def make_many(client, n: int, prefix: str = "m") -> list[str]:
    """n messages, newest first in the returned list."""
    made = [f"{prefix}{i:03d}" for i in range(n)]
    for rid in made:
        receipt(client, rid, "delivered" if int(rid[-3:]) % 2 else "seen")
    return list(reversed(made))


def walk(client, query: str) -> tuple[list[list[str]], str]:
    """Follow Next links to the end; returns the pages and the last page's html."""
    pages, url = [], "/" + query
    while True:
        page = client.get(url)
        html = page.get_data(as_text=True)
        pages.append([r for r, _ in ROW_RE.findall(html)])
        url = link(html, "next")
        if url is None:
            return pages, html


@pytest.mark.parametrize("n,sizes", [(25, [25]), (26, [25, 1]), (50, [25, 25]), (51, [25, 25, 1])])
def test_pages_at_exact_boundaries(client, n, sizes):
    newest_first = make_many(client, n)
    pages, last_html = walk(client, "?size=25")
    assert [len(p) for p in pages] == sizes
    assert sum(pages, []) == newest_first
    assert link(last_html, "next") is None


def test_first_page_has_no_previous_and_previous_returns_exactly(client):
    newest_first = make_many(client, 60)
    first = client.get("/?size=25").get_data(as_text=True)
    assert link(first, "prev") is None
    second = client.get(link(first, "next")).get_data(as_text=True)
    third = client.get(link(second, "next")).get_data(as_text=True)
    assert [r for r, _ in ROW_RE.findall(third)] == newest_first[50:]
    back = client.get(link(third, "prev")).get_data(as_text=True)
    assert [r for r, _ in ROW_RE.findall(back)] == newest_first[25:50]
    back_to_first = client.get(link(back, "prev")).get_data(as_text=True)
    assert [r for r, _ in ROW_RE.findall(back_to_first)] == newest_first[:25]
    assert link(back_to_first, "prev") is None
    assert link(back_to_first, "next") is not None


def test_paging_a_multi_status_filter_merges_in_order(client):
    make_many(client, 60)
    register(client, "zz-pending", "79999")
    pages, _ = walk(client, "?size=25&status=seen&status=delivered&status=pending")
    flat = sum(pages, [])
    assert flat[0] == "zz-pending" and len(flat) == 61 and len(set(flat)) == 61
    seen_only, _ = walk(client, "?size=25&status=seen")
    assert sum(seen_only, []) == [r for r in flat if r != "zz-pending" and int(r[-3:]) % 2 == 0]


def test_empty_filter_result_has_no_pager(mixed):
    html = mixed.get("/?q=nothing-like-this").get_data(as_text=True)
    assert "No message matches these filters" in html
    assert link(html, "next") is None and link(html, "prev") is None


def test_counters_per_status_and_rates(mixed, app):
    html = mixed.get("/").get_data(as_text=True)
    numbers = dict(
        re.findall(
            r'<span class="dot dot-(\w+)" aria-hidden="true"></span>\w+</dt><dd>(\d+)</dd>', html
        )
    )
    assert numbers == {
        "pending": "1",
        "success": "1",
        "delivered": "1",
        "seen": "2",
        "failed": "2",
        "expired": "1",
    }
    assert "<dt>Messages</dt><dd>8</dd>" in html
    # delivered or seen (3) of the 7 with a receipt; seen 2 of 7.
    assert "42.9%" in html and "28.6%" in html
    with app.app_context():
        by_phone = listing.counters_for(MessageFilter(phone="791"))
        assert by_phone.by_status["seen"] == 1 and by_phone.total == 3
        assert not by_phone.capped
        assert listing.counters_for(MessageFilter(status=("failed",), code=9001)).total == 1
        assert listing.counters_for(MessageFilter(anomaly=True)).by_status["seen"] == 1


def test_tally_kept_in_step_with_every_change_equals_a_recount(mixed, app):
    reply(mixed, "aaa-success", "79100000001", text="thanks")  # moves its last activity
    receipt(mixed, "bbb-delivered", "seen")
    receipt(mixed, "bbb-delivered", "seen")  # a duplicate changes nothing
    reply(mixed, "never-sent", "79400000000", text="hi")  # an unknown message: pending
    with app.app_context():
        kept = {
            (t.day, t.status, t.code, t.anomaly): t.n
            for t in db.session.execute(db.select(MessageTally)).scalars()
            if t.n
        }
        tally.rebuild()
        rebuilt = {
            (t.day, t.status, t.code, t.anomaly): t.n
            for t in db.session.execute(db.select(MessageTally)).scalars()
        }
        assert kept == rebuilt
        assert (
            sum(rebuilt.values())
            == db.session.execute(db.select(db.func.count()).select_from(Message)).scalar()
            == 9
        )


def recounted(flt: MessageFilter) -> dict[str, int]:
    """Messages per status for a filter, counted one by one from the page's own query."""
    found = db.session.execute(flt.query()).scalars().all()
    return {s: sum((m.status or "pending") == s for m in found) for s in listing.STATUS_CHOICES}


@pytest.mark.parametrize(
    "query",
    [
        "",
        "status=seen&status=pending",
        "code=9001",
        "anomaly=1",
        "anomaly=contradiction",
        "anomaly=coerced",
        "from=2000-01-01",
        "to=2000-01-01",
        "phone=791",
        "q=ccc",
        "tag=spring",
        "tag=spring&tag=vip",
        "appkey=APP2",
        "appkey=APP2&status=seen",
        "tag=vip&from=2000-01-01&status=delivered",
    ],
)
def test_counters_of_every_filter_equal_a_recount(mixed, app, query):
    """Whatever the filter, the counters count exactly the messages the list holds (from the
    tally where its keys answer, from the messages otherwise)."""
    for rid, status, tags, appkey in (
        ("t-1", "seen", ["spring"], "APP2"),
        ("t-2", "delivered", ["spring", "vip"], "APP2"),
        ("t-3", None, ["vip"], "APP1"),
    ):
        post(mixed, bodies.REGISTER, bodies.registration(rid, "7900", tags=tags, appkey=appkey))
        if status:
            receipt(mixed, rid, status)
    from werkzeug.datastructures import MultiDict

    flt = MessageFilter.from_args(MultiDict(parse_qsl(query)))
    with app.app_context():
        counted = listing.counters_for(flt)
        assert not counted.capped
        assert counted.by_status == recounted(flt)
        if query.startswith(("tag", "appkey")):
            assert 0 < counted.total < 11, counted.by_status


@pytest.mark.parametrize(
    "query", ["phone=79", "phone=7910", "phone=79&status=seen&status=failed", "q=ccc", "q=x"]
)
def test_a_prefix_lists_and_counts_the_same_whichever_index_serves_it(
    mixed, app, monkeypatch, query
):
    """A broad prefix is filtered while walking the order's index, a narrow one sought
    through its own: both give the same page and the same counters."""
    from werkzeug.datastructures import MultiDict

    flt = MessageFilter.from_args(MultiDict(parse_qsl(query)))
    found = {}
    for bound, seeks in ((10**6, True), (-1, False)):
        monkeypatch.setattr(listing, "BROAD_PREFIX", bound)
        with app.app_context():
            assert listing.seek_prefix(flt) is seeks
            page = listing.fetch_page(flt, 2)
            found[bound] = (
                [m.request_id for m in page.rows],
                listing.counters_for(flt).by_status,
            )
        found[f"{bound} html"] = ids(mixed, "?" + query)
    assert found[10**6] == found[-1]
    assert found[f"{10**6} html"] == found["-1 html"]
    with app.app_context():
        # The conditions without the prefix's index select the same messages on both databases.
        plain = db.select(Message.request_id).where(*flt.conditions()).order_by(Message.request_id)
        bare = db.select(Message.request_id).where(*flt.conditions(prefix_index=False))
        assert (
            db.session.execute(plain).scalars().all()
            == db.session.execute(bare.order_by(Message.request_id)).scalars().all()
        )


def test_direct_counts_stop_at_the_cap(client, app, monkeypatch):
    for i in range(5):
        message_with(client, f"cap{i}", "seen", phone=f"7555000{i}")
    monkeypatch.setattr(listing, "COUNT_CAP", 3)
    with app.app_context():
        capped = listing.counters_for(MessageFilter(phone="7555"))
        assert capped.capped and capped.delivery_rate is None
        exact = listing.counters_for(MessageFilter(phone="75550001"))
        assert not exact.capped and exact.total == 1 and exact.delivery_rate == 1.0
    assert "narrow the filters" in client.get("/?phone=7555").get_data(as_text=True)


def test_filter_round_trip_and_matches_agree_with_query(mixed, app):
    from werkzeug.datastructures import MultiDict

    args = MultiDict(
        [
            ("status", "seen"),
            ("status", "pending"),
            ("phone", " 791 "),
            ("code", "11002"),
            ("q", "g"),
            ("from", "2020-01-01"),
            ("to", "2100-01-01"),
            ("anomaly", "on"),
        ]
    )
    flt = MessageFilter.from_args(args)
    assert flt.phone == "791" and flt.status == ("pending", "seen") and flt.anomaly
    assert (
        MessageFilter.from_args(
            MultiDict(
                [
                    (k, v)
                    for k, vs in flt.to_args().items()
                    for v in (vs if isinstance(vs, list) else [vs])
                ]
            )
        )
        == flt
    )
    with pytest.raises(FilterError) as bad:
        MessageFilter.from_args({"status": "read"})
    assert bad.value.field == "status"
    with app.app_context():
        everything = list(db.session.execute(db.select(Message)).scalars())
        for candidate in (
            flt,
            MessageFilter(status=("failed",)),
            MessageFilter(phone="792"),
            MessageFilter(anomaly=True),
            MessageFilter(q="ddd"),
            MessageFilter(),
        ):
            by_query = [m.request_id for m in db.session.execute(candidate.query()).scalars()]
            by_python = [
                m.request_id
                for m in sorted(
                    everything, key=lambda m: (m.last_activity_at, m.request_id), reverse=True
                )
                if candidate.matches(m)
            ]
            assert by_query == by_python


def test_message_page_timeline_replies_and_raw_bodies(client):
    register(client, "tl-1", "79100000099", text="Your code is <b>1234</b>")
    receipt(client, "tl-1", "seen")
    receipt(
        client,
        "tl-1",
        "success",
        cost={
            "currency": "USD",
            "localPrice": 0.05,
            "originalPrice": 0.04,
            "rateType": "Transactional",
        },
    )
    receipt(client, "tl-1", "delivered")
    receipt(client, "tl-1", "expired")  # expired beside seen: an anomaly
    reply(client, "tl-1", "79100000099", text="line one\nline two <i>")
    page = client.get("/messages/tl-1")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    timeline = re.findall(r'<li class="timeline-item" id="receipt-\d+" data-status="(\w+)">', html)
    assert timeline == ["seen", "success", "delivered", "expired"]  # arrival order
    assert "Viber message has seen" in html and "Message has been read" in html
    assert "expired beside seen" in html
    assert "0.05 USD" in html
    assert "Your code is &lt;b&gt;1234&lt;/b&gt;" in html
    assert "line one\nline two &lt;i&gt;" in html
    assert html.count('<details class="raw">') == 6  # registration, four receipts, the reply
    assert "&#34;requestId&#34;: &#34;tl-1&#34;" in html or "&quot;requestId&quot;" in html


def test_unknown_message_is_404(client):
    page = client.get("/messages/no-such-id")
    assert page.status_code == 404
    assert "No such message" in page.get_data(as_text=True)


def test_hostile_reply_fields_are_escaped_and_never_links(client):
    reply(client, "hostile", "79100000123", text="<script>alert(1)</script>")
    reply(
        client,
        "hostile",
        "79100000123",
        media="javascript:alert(1)",
        file_name="<img src=x onerror=alert(1)>.png",
    )
    reply(
        client,
        "hostile",
        "79100000123",
        media="data:text/html,<script>alert(2)</script>",
        file_name="x.jpg",
    )
    reply(
        client,
        "hostile",
        "79100000123",
        media="https://cdn.example.com/pic.jpeg?a=1&b=2",
        file_name="pic.jpeg",
    )
    for url in ("/messages/hostile", "/conversations/79100000123"):
        html = client.get(url).get_data(as_text=True)
        assert "<script>alert" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert 'href="javascript:' not in html and 'src="javascript:' not in html
        assert 'href="data:' not in html and 'src="data:' not in html
        assert "not an http(s) address" in html
        assert 'href="https://cdn.example.com/pic.jpeg?a=1&amp;b=2"' in html
        assert '<img class="preview" src="https://cdn.example.com/pic.jpeg?a=1&amp;b=2"' in html


def test_rejected_page_lists_reason_and_body_escaped(client):
    bad = client.post(
        "/webhooks/viber/dr",
        data='{"status": "read", "requestId": "<b>x</b>"}',
        content_type="application/json",
    )
    assert bad.status_code == 422
    html = client.get("/rejected").get_data(as_text=True)
    assert "status: must be one of" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert "Reprocess" in html


def test_rejected_pages_merge_refused_and_rejected_bodies_newest_first(client, app, monkeypatch):
    from app.dashboard import views

    monkeypatch.setattr(views, "REJECTED_PAGE", 4)
    for i in range(7):
        bad = client.post(
            "/webhooks/viber/dr", data=f'{{"n": {i}}}', content_type="application/json"
        )
        assert bad.status_code == 422
        with app.app_context():
            ingest.refuse("dr", b"{}", "application/json", {}, None, 401, "no token")
    with app.app_context():
        kept = db.select(RawBody.id).where(RawBody.outcome.in_(("rejected", "refused")))
        expected = db.session.execute(kept.order_by(RawBody.id.desc())).scalars().all()
    assert len(expected) == 14
    seen, path = [], "/rejected"
    while path:
        html = client.get(path).get_data(as_text=True)
        page = [int(n) for n in re.findall(r'<tr id="raw-(\d+)"', html)]
        assert 0 < len(page) <= 4
        seen += page
        more = re.search(r'<a rel="next" href="([^"]+)"', html)
        path = more.group(1).replace("&amp;", "&") if more else None
    assert seen == expected


def test_reprocess_button_applies_a_refused_body(client, app):
    body = (
        b'{"status": "seen", "requestId": "late-1", "code": 11002, "message": "m", '
        b'"sendTime": "2024-05-01 10:00:00"}'
    )
    with app.app_context():
        raw = ingest.refuse("dr", body, "application/json", {}, "127.0.0.1", 401, "token missing")
        raw_id = raw.id
    html = client.get("/rejected").get_data(as_text=True)
    assert f'id="raw-{raw_id}"' in html and "token missing" in html
    done = client.post(f"/rejected/{raw_id}/reprocess")
    assert done.status_code == 303
    after = client.get(done.headers["Location"]).get_data(as_text=True)
    assert f"Body #{raw_id} reprocessed: accepted" in after
    with app.app_context():
        assert db.session.get(RawBody, raw_id).outcome == "accepted"
        assert db.session.get(Message, "late-1").status == "seen"
    assert ids(client, "?status=seen") == ["late-1"]


def test_reprocess_from_htmx_returns_the_row(client, app):
    with app.app_context():
        raw_id = ingest.refuse("dr", b"{}", "application/json", {}, None, 401, "no token").id
    row = client.post(f"/rejected/{raw_id}/reprocess", headers={"HX-Request": "true"})
    html = row.get_data(as_text=True)
    assert row.status_code == 200
    assert html.lstrip().startswith(f'<tr id="raw-{raw_id}" data-outcome="rejected">')
    assert "reprocessed" in html
    assert client.post("/rejected/999999/reprocess").status_code == 404


def test_times_carry_utc_for_the_viewer_script(mixed):
    html = mixed.get("/").get_data(as_text=True)
    found = re.search(r'<time datetime="([^"]+)" title="([^"]+)" data-local>', html)
    assert found.group(1).endswith("Z") and found.group(2).endswith(" UTC")


def test_pages_have_no_inline_script_or_style(mixed):
    for url in (
        "/",
        "/messages/ccc-seen",
        "/conversations",
        "/conversations/79200000003",
        "/rejected",
    ):
        html = mixed.get(url).get_data(as_text=True)
        assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None, url
        assert " style=" not in html and "<style" not in html and "hx-on" not in html, url
        assert "javascript:" not in html, url


def test_the_icon_is_served_to_anyone_and_named_by_every_page(client, anon_client):
    icon = anon_client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.mimetype in ("image/vnd.microsoft.icon", "image/x-icon")
    assert icon.data[:4] == b"\x00\x00\x01\x00"  # an ICO file
    for path, who in (("/", client), ("/login", anon_client)):
        href = re.search(
            r'<link rel="icon" href="([^"]+)"', who.get(path).get_data(as_text=True)
        ).group(1)
        named = anon_client.get(href)
        assert named.status_code == 200 and named.mimetype == "image/svg+xml", (path, href)
