"""What the pages write: counts with the right noun, one format for a price, "–" for a step
not reached, whole requestIds, times localised by the browser, the reply box when sending is
not configured, and the requestId of a rejected body."""

import re
from datetime import UTC, datetime, timedelta

from app.dashboard.templating import counted, price
from support.timed_ingest import receipt, register, reply

T = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
PHONE = "79100000041"
COST = {"currency": "USD", "localPrice": 29.89465, "originalPrice": 0.05, "rateType": "Session"}


def html(client, path) -> str:
    response = client.get(path)
    assert response.status_code == 200, path
    return response.get_data(as_text=True)


def test_price_keeps_the_stored_precision_without_trailing_zeros():
    assert price(29.89465) == "29.89465"
    assert price(1234.567891) == "1234.567891"
    assert price(0.05) == "0.05"
    assert price(1.0) == "1"
    assert price(0.0) == "0"
    assert price(None) == "–"
    assert price(0.1234564) == "0.123456"
    assert price(0.5, signed=True) == "+0.5"
    assert price(-0.5, signed=True) == "−0.5"


def test_counted_writes_one_in_the_singular():
    assert counted(1, "message") == "1 message"
    assert counted(2, "message") == "2 messages"
    assert counted(0, "reply", "replies") == "0 replies"
    assert counted(1, "reply", "replies") == "1 reply"
    assert counted(1200, "reply", "replies") == "1,200 replies"


def test_a_thread_with_one_message_and_one_reply_says_so(app, client):
    with app.app_context():
        register(T, "a" * 32, PHONE, text="Your parcel is on its way")
        reply(T + timedelta(minutes=1), "a" * 32, PHONE, "Thanks")
    page = html(client, f"/conversations/{PHONE}")
    assert "1 message · 1 reply ·" in page
    assert "1 messages" not in page and "1 replies" not in page


def test_a_price_reads_the_same_in_the_list_the_message_and_analytics(app, client):
    rid = "b" * 32
    with app.app_context():
        register(T, rid, PHONE, tags=["spring"])
        receipt(T + timedelta(seconds=2), rid, "success", cost=COST)
    listing = html(client, "/")
    message = html(client, f"/messages/{rid}")
    analytics = html(client, "/analytics?range=custom&start=2025-03-01T09:00&end=2025-03-01T10:00")
    campaigns = html(client, "/campaigns?range=all")
    for page in (listing, message, analytics, campaigns):
        assert "29.89465" in page
        assert "29.8946<" not in page and "29.8947" not in page
    assert "(original 0.05)" in message
    assert "<td>0.05</td>" in analytics and "0.0500" not in analytics


def test_steps_not_reached_show_a_dash_on_the_message_page(app, client):
    rid = "c" * 32
    with app.app_context():
        register(T, rid, PHONE)
        receipt(T + timedelta(seconds=2), rid, "success")
    page = html(client, f"/messages/{rid}")
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd>(.*?)</dd></div>", page))
    assert "<time" in facts["Accepted"]
    for label in ("Delivered", "Seen"):
        assert re.sub(r"<[^>]+>", "", facts[label]).strip() == "–", facts[label]
    assert "Failed" not in facts and "Expired" not in facts


def test_request_ids_that_share_a_beginning_are_shown_whole(app, client):
    ids = ["order-2025-03-01-000001", "order-2025-03-01-000002"]
    with app.app_context():
        for n, rid in enumerate(ids):
            register(T + timedelta(seconds=n), rid, PHONE)
            reply(T + timedelta(minutes=1, seconds=n), rid, PHONE, f"answer {n}")
    for path in ("/", f"/conversations/{PHONE}", "/search?q=answer"):
        page = html(client, path)
        for rid in ids:
            assert f">{rid}</a>" in page, (path, rid)
    # The live feed's entries too (rendered as the socket pushes them).
    with app.test_request_context():
        from flask import render_template

        from app.records.models import Activity, db

        shown = set()
        for a in db.session.execute(db.select(Activity)).scalars():
            item = render_template("partials/_feed_item.html", a=a)
            shown |= {rid for rid in ids if f">{rid}</a>" in item}
        assert shown == set(ids)


def test_without_sending_settings_send_is_disabled_and_the_reason_shown_once(app, client):
    with app.app_context():
        reply(T, "d" * 32, PHONE, "Hello?")
    page = html(client, f"/conversations/{PHONE}")
    button = re.search(r"<button type=\"submit\"[^>]*>Send</button>", page).group(0)
    assert "disabled" in button and 'aria-describedby="reply-not-configured"' in button
    assert page.count("Sending is not configured") == 1
    # A post without the button (no JavaScript, an old tab) shows the notice, not a second
    # "Not sent" saying the same.
    sent = client.post(
        f"/conversations/{PHONE}/send", data={"text": "hi"}, headers={"HX-Request": "true"}
    ).get_data(as_text=True)
    assert sent.count("Sending is not configured") == 1 and "<strong>Not sent</strong>" not in sent


def test_failed_sends_and_the_session_window_are_local_times(app, client):
    with app.app_context():
        reply(datetime.now(UTC) - timedelta(hours=1), "e" * 32, PHONE, "Hello?")
    client.post(f"/conversations/{PHONE}/send", data={"text": "hi"})
    page = html(client, f"/conversations/{PHONE}")
    box = page[page.index('id="reply-box"') :]
    assert " UTC</time>" in box  # the server's text, until app.js localises it
    assert box.count("<time ") == box.count("data-local") >= 2, box


def test_a_rejected_body_shows_its_request_id_and_links_a_known_message(app, client):
    with app.app_context():
        register(T, "f" * 32, PHONE)
    for rid in ("f" * 32, "unknown-id-1"):
        bad = client.post(
            "/webhooks/viber/dr",
            data=f'{{"status": "read", "requestId": "{rid}"}}',
            content_type="application/json",
        )
        assert bad.status_code == 422
    page = html(client, "/rejected")
    assert f'<a class="mono request-id" href="/messages/{"f" * 32}">{"f" * 32}</a>' in page
    assert ">unknown-id-1</span>" in page and 'href="/messages/unknown-id-1"' not in page
