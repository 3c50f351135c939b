"""Conversations: phones by latest activity, and the interleaved thread of one phone."""

import re
from datetime import UTC

from support.dashboard_data import message_with, receipt, register, reply

THREAD_RE = re.compile(r'<article class="bubble bubble-(out|in)" id="([^"]+)"')


def test_phones_by_latest_activity_with_preview_and_counts(client):
    register(client, "c-1", "79100000001", text="Your code is 1")
    register(client, "c-2", "79100000002", text="Your code is 2")
    reply(client, "c-1", "79100000001", text="got it")
    page = client.get("/conversations")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    order = re.findall(r'<tr id="contact-([^"]+)">', html)
    assert order == ["79100000001", "79100000002"]
    assert "got it" in html
    assert 'href="/conversations/79100000001"' in html
    assert re.findall(
        r'<tr id="contact-[^"]+">\s*<td class="mono"><a[^>]+>[^<]+</a>.*?</td>\s*'
        r'<td class="preview-text">.*?</td>\s*<td class="num">(\d+)</td>\s*<td class="num">(\d+)</td>',
        html,
    ) == [("1", "1"), ("1", "0")]
    assert re.findall(
        r'<tr id="contact-([^"]+)">',
        client.get("/conversations?phone=791000000 02").get_data(as_text=True),
    ) == ["79100000002"]


def test_empty_conversations_show_the_webhook_urls(client):
    html = client.get("/conversations").get_data(as_text=True)
    assert "No conversations yet" in html and "http://localhost/webhooks/viber/message" in html


def test_contacts_pages_by_keyset(client, app):
    from app.dashboard import conversations

    for i in range(conversations.CONTACTS_PAGE + 3):
        register(client, f"p-{i:03d}", f"7900{i:04d}")
    first = client.get("/conversations").get_data(as_text=True)
    phones = re.findall(r'<tr id="contact-([^"]+)">', first)
    assert len(phones) == conversations.CONTACTS_PAGE and phones[0] == "79000052"
    nxt = re.search(r'<a rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    rest = re.findall(r'<tr id="contact-([^"]+)">', client.get(nxt).get_data(as_text=True))
    assert rest == ["79000002", "79000001", "79000000"]
    assert client.get("/conversations?after=%%%").status_code == 400


def test_thread_interleaves_messages_and_replies_in_time_order(client):
    phone = "79100000077"
    register(client, "t-1", phone, text="first question")
    reply(client, "t-1", phone, text="answer one")
    register(client, "t-2", phone, text="second question")
    receipt(client, "t-2", "seen")
    reply(client, "t-2", phone, text="answer two\nwith a second line")
    reply(client, "t-1", phone, text="late answer to the first")
    html = client.get(f"/conversations/{phone}").get_data(as_text=True)
    items = THREAD_RE.findall(html)
    assert [kind for kind, _ in items] == ["out", "in", "out", "in", "in"]
    assert items[0][1] == "thread-msg-t-1" and items[2][1] == "thread-msg-t-2"
    texts = re.findall(r'<p class="bubble-text">([^<]*)</p>', html)
    assert texts == [
        "first question",
        "answer one",
        "second question",
        "answer two\nwith a second line",
        "late answer to the first",
    ]
    # The outbound message carries its live status badge; the thread has its stable id.
    assert re.search(r'id="thread-msg-t-2" data-status="seen">.*?badge-seen', html, re.S)
    assert 'id="thread"' in html


def test_reply_to_an_unknown_message_belongs_to_the_phone_thread(client):
    reply(client, "unknown-rid", "79100000088", text="who is this?")
    html = client.get("/conversations/79100000088").get_data(as_text=True)
    kinds = [kind for kind, _ in THREAD_RE.findall(html)]
    # The message we never sent is shown (pending, no text) before its reply.
    assert kinds == ["out", "in"] and "(text not registered)" in html and "badge-pending" in html


def test_unknown_phone_is_404(client):
    message_with(client, "x-1", "seen", phone="79100000001")
    page = client.get("/conversations/70000000000")
    assert page.status_code == 404 and "Nothing for this phone" in page.get_data(as_text=True)


def test_a_message_registered_after_its_reply_stays_above_the_reply(app, client):
    """The sending system may register a message late: after its receipts and even after the
    user answered. It belongs where it was first heard of, before the answer."""
    from datetime import datetime, timedelta

    from support.timed_ingest import receipt as receipt_at
    from support.timed_ingest import register as register_at
    from support.timed_ingest import reply as reply_at

    phone, t0 = "79100000066", datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with app.app_context():
        register_at(t0, "early", phone, text="an earlier message")
        receipt_at(t0 + timedelta(minutes=1), "late-reg", "delivered")
        reply_at(t0 + timedelta(minutes=2), "late-reg", phone, "yes please")
        register_at(t0 + timedelta(minutes=3), "late-reg", phone, text="want a call back?")
    html = client.get(f"/conversations/{phone}").get_data(as_text=True)
    assert [ident for _, ident in THREAD_RE.findall(html)][:2] == [
        "thread-msg-early",
        "thread-msg-late-reg",
    ]
    assert THREAD_RE.findall(html)[2][0] == "in"
    # The bubble shows the time it is placed at, the first time the message was heard of.
    bubble = html[html.index('id="thread-msg-late-reg"') :]
    assert '<time datetime="2026-03-01T12:01:00' in bubble.split("</article>")[0]
