"""Text search: replies by their text and messages by their registered text, on SQLite's FTS5
and PostgreSQL's tsvector index, kept right by every write path."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from flask_migrate import upgrade
from sqlalchemy import text

from app import create_app
from app.dashboard import search as search_view
from app.ops.maintenance import purge_batch
from app.ops.rebuild import rebuild
from app.ops.seed import seed
from app.records import search
from app.records.models import LatencyWeek, Message, OutcomeDay, Reply, db
from support.browser import watch_console
from support.dashboard_data import receipt, register, reply
from support.timed_ingest import register as register_at
from support.timed_ingest import reply as reply_at

REPLY_ROW = re.compile(r'href="/conversations/([^"#]+)#reply-(\d+)"')
MESSAGE_ROW = re.compile(
    r'<td data-label="requestId"><a class="mono request-id" href="/messages/([^"]+)"'
)


def found(client, q: str, **args):
    page = client.get("/search", query_string={"q": q, **args})
    html = page.get_data(as_text=True)
    return page.status_code, REPLY_ROW.findall(html), MESSAGE_ROW.findall(html), html


def replies_of(client, q):
    return [phone for phone, _ in found(client, q)[1]]


def messages_of(client, q):
    return found(client, q)[2]


def index_is_sound(app) -> None:
    """SQLite: each FTS5 index agrees with its table, row for row (FTS5's own integrity check
    reads every row of the content table). PostgreSQL keeps its index itself."""
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            return
        with db.engine.begin() as conn:
            for fts in search.FTS_TABLES:
                conn.exec_driver_sql(f"INSERT INTO {fts}({fts}) VALUES('integrity-check')")


def test_finds_replies_and_messages_by_a_word_in_any_case(client, app):
    register(client, "m-1", "79100000001", text="Your REFUND of 20 USD is on its way")
    register(client, "m-2", "79100000002", text="Order #4471 has shipped")
    reply(client, "m-1", "79100000001", text="I still want a refund, please")
    reply(client, "m-2", "79100000002", text="thanks")
    status, replies, messages, html = found(client, "Refund")
    assert status == 200
    assert [p for p, _ in replies] == ["79100000001"]
    assert messages == ["m-1"]
    assert "<mark>refund</mark>" in html and "<mark>REFUND</mark>" in html
    assert 'href="/messages/m-1"' in html and "thanks" not in html
    # A number, a phone-ish token and every word of several.
    assert messages_of(client, "4471") == ["m-2"]
    assert messages_of(client, "order shipped") == ["m-2"]
    assert messages_of(client, "order refund") == []
    # A word matches whole unless it ends in *.
    assert messages_of(client, "refu") == [] and messages_of(client, "refu*") == ["m-1"]
    assert replies_of(client, "PLEAS*") == ["79100000001"]
    index_is_sound(app)


def test_newest_first_and_keyset_pages(client, app, monkeypatch):
    monkeypatch.setattr(search_view, "PAGE", 3)
    for i in range(5):
        register(client, f"k-{i}", f"7920000000{i}", text=f"refund number {i}")
        reply(client, f"k-{i}", f"7920000000{i}", text=f"refund {i} please")
    status, replies, messages, html = found(client, "refund")
    assert status == 200
    assert [p for p, _ in replies] == ["79200000004", "79200000003", "79200000002"]
    assert messages == ["k-4", "k-3", "k-2"]
    links = dict(
        (kind, href.replace("&amp;", "&"))
        for href, kind in re.findall(r'<a rel="next" href="([^"]+)">Older (replies|messages)', html)
    )
    older = client.get(links["replies"]).get_data(as_text=True)
    assert [p for p, _ in REPLY_ROW.findall(older)] == ["79200000001", "79200000000"]
    assert MESSAGE_ROW.findall(older) == []
    older = client.get(links["messages"]).get_data(as_text=True)
    assert MESSAGE_ROW.findall(older) == ["k-1", "k-0"]
    assert 'rel="next"' not in older


def test_follows_ingest_registration_after_receipts_and_purge(client, app):
    # The receipt makes the message (no text yet); the registration brings the text.
    receipt(client, "late-1", "delivered")
    assert messages_of(client, "parcel") == []
    register(client, "late-1", "79300000001", text="Your parcel is out for delivery")
    assert messages_of(client, "parcel") == ["late-1"]
    reply(client, "late-1", "79300000001", text="parcel never came")
    register(client, "keep-1", "79300000002", text="another parcel")
    assert replies_of(client, "parcel") == ["79300000001"]
    index_is_sound(app)
    with app.app_context():
        purge_batch(["late-1"])
        db.session.commit()
    assert messages_of(client, "parcel") == ["keep-1"]
    assert replies_of(client, "parcel") == []
    index_is_sound(app)
    # rebuild rewrites the derived rows; the index follows.
    with app.app_context():
        assert rebuild().differences == 0
    assert messages_of(client, "parcel") == ["keep-1"]
    index_is_sound(app)


def test_seeded_rows_are_searchable(app, client):
    with app.app_context():
        seed(200, replies=60, random_seed=1, zone=UTC)
        texts = db.session.execute(db.select(Message.text).where(Message.text.like("%refund%")))
        refunds = len(texts.all())
        replies = db.session.execute(
            db.select(db.func.count()).where(Reply.text.like("%refund%"))
        ).scalar()
    assert refunds > 0 and replies > 0
    status, hits, messages, _ = found(client, "refund", kind="messages")
    assert status == 200 and len(messages) == min(refunds, search_view.PAGE)
    index_is_sound(app)


HOSTILE_200 = [
    '"refund',
    "refund*",
    "NEAR(refund",
    "NEAR(refund, 2)",
    "-refund",
    "refund OR",
    "refund AND NOT",
    "text:refund",
    "^refund",
    "'; DROP TABLE message; --",
    "refund')",
    "refund & !x | (",
    "réfund",
    "退款",
    "x" * 200,
]
HOSTILE_400 = {
    "": "type a word",
    "   ": "type a word",
    '"': "nothing to search for",
    "*": "nothing to search for",
    "-": "nothing to search for",
    "NEAR(": None,  # NEAR is a word like any other: 200
    "()": "nothing to search for",
    "refund\x01": "control characters",
    "refund\x00": "NUL",  # refused before any view (URL)
    "ref\tund": "control characters",
    "x" * 201: "at most 200 characters",
    "a b c d e f g h i": "at most 8 words",
}


@pytest.mark.parametrize("q", HOSTILE_200)
def test_query_syntax_of_either_database_is_just_words(client, q):
    register(client, "h-1", "79400000001", text="refund")
    status, _, _, html = found(client, q)
    assert status == 200, html


@pytest.mark.parametrize("q", list(HOSTILE_400))
def test_bad_queries_are_answered_400_with_what_is_wrong(client, q):
    status, _, _, html = found(client, q)
    reason = HOSTILE_400[q]
    if reason is None:
        assert status == 200
        return
    assert status == 400
    if reason == "NUL":
        assert "NUL" in html
        return
    assert "Cannot search for this" in html and reason in html
    answer = client.get("/search", query_string={"q": q}, headers={"Accept": "application/json"})
    assert answer.status_code == 400
    assert answer.json["field"] == "q" and reason in answer.json["reason"]


def test_bad_paging_arguments_are_400(client):
    for args in (
        {"kind": "all"},
        {"after": "5"},
        {"kind": "replies", "after": "x"},
        {"kind": "replies", "after": str(2**63)},
        {"kind": "messages", "after": "garbage"},
        {"kind": "messages", "after": "9" * 300},
    ):
        page = client.get("/search", query_string={"q": "refund", **args})
        assert page.status_code == 400, args
        assert "Cannot search for this" in page.get_data(as_text=True)


def test_no_query_shows_how_to_search(client):
    page = client.get("/search")
    assert page.status_code == 200
    assert "end a word with <code>*</code>" in page.get_data(as_text=True)


def test_json_form(client):
    register(client, "j-1", "79500000001", text="Refund approved")
    reply(client, "j-1", "79500000001", text="great refund")
    answer = client.get(
        "/search", query_string={"q": "refund"}, headers={"Accept": "application/json"}
    )
    assert answer.status_code == 200
    body = answer.json
    assert [m["requestId"] for m in body["messages"]] == ["j-1"]
    assert body["messages"][0]["url"] == "/messages/j-1"
    assert [r["text"] for r in body["replies"]] == ["great refund"]
    assert body["replies"][0]["thread"] == "/conversations/79500000001"
    assert body["nextReplies"] is None and body["nextMessages"] is None


def test_a_hostile_text_is_shown_as_text(client):
    evil = '<script>alert("x")</script> refund <img src=x onerror=alert(1)>'
    register(client, "x-1", "79600000001", text=evil)
    reply(client, "x-1", "79600000001", text=evil)
    status, replies, messages, html = found(client, "refund")
    assert status == 200 and replies and messages
    assert "<script>alert" not in html and "<img src=x" not in html
    assert html.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") == 2
    assert html.count("<mark>refund</mark>") == 2


def test_snippet_cuts_around_the_first_match():
    terms = search.parse("refund")
    long = "a " * 200 + "the REFUND is here " + "b " * 200
    parts = search.snippet(long, terms)
    assert parts[0] == ("…", False) and parts[-1] == ("…", False)
    assert ("REFUND", True) in parts
    assert sum(len(p) for p, _ in parts) <= search.SNIPPET + 2


def test_the_migration_indexes_rows_stored_before_it(database_url):
    """Rows written before the index existed are found once the migration has run."""
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    try:
        with app.app_context():
            upgrade(revision="0008")
            # This code's ingest also writes the rollups of later revisions: there for the
            # writes, gone again before the upgrade makes them.
            later = [OutcomeDay.__table__, LatencyWeek.__table__]
            db.metadata.create_all(db.engine, tables=later)
            register_at(at, "old-1", "79700000001", text="an old refund")
            reply_at(at + timedelta(minutes=1), "old-1", "79700000001", text="refund me")
            db.session.remove()
            db.metadata.drop_all(db.engine, tables=later)
            upgrade()
            terms = search.parse("refund")
            assert [m.request_id for m in search.messages(terms, None, 10)] == ["old-1"]
            assert [r.text for r in search.replies(terms, None, 10)] == ["refund me"]
            if db.engine.dialect.name == "sqlite":
                with db.engine.begin() as conn:
                    for fts in search.FTS_TABLES:
                        conn.exec_driver_sql(f"INSERT INTO {fts}({fts}) VALUES('integrity-check')")
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_the_index_is_made_alike_by_the_models_and_the_migrations(app, database_url, tmp_path):
    def objects(application) -> set:
        with application.app_context(), db.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                rows = conn.execute(
                    text("SELECT type, name, sql FROM sqlite_master WHERE name LIKE '%fts%'")
                )
            else:
                rows = conn.execute(
                    text(
                        "SELECT indexname, regexp_replace(indexdef, ' ON [^ ]+\\.', ' ON ') "
                        "FROM pg_indexes WHERE indexname LIKE '%text_search'"
                    )
                )
            return set(map(tuple, rows))

    made = objects(app)
    assert made
    other = database_url
    if other.startswith("sqlite"):
        other = "sqlite:///" + str(tmp_path / "migrated.db")
    migrated = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": other})
    with migrated.app_context():
        if not other.startswith("sqlite"):
            db.drop_all()
        upgrade()
    assert objects(migrated) == made
    with migrated.app_context():
        db.engine.dispose()


@pytest.mark.browser
@pytest.mark.parametrize("width,height", [(390, 844), (1366, 900)])
def test_the_search_box_in_a_browser(page, app, width, height):
    at = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    with app.app_context():
        register_at(at, "b-1", "79800000001", text="Your refund of 12 USD is approved")
        reply_at(at + timedelta(minutes=1), "b-1", "79800000001", text="<b>refund</b> thanks")
    page.set_viewport_size({"width": width, "height": height})
    problems = watch_console(page)
    page.goto("/")
    box = page.get_by_role("searchbox", name="Search the texts of messages and replies")
    assert box.is_visible()
    bounds = box.bounding_box()
    assert bounds["x"] >= 0 and bounds["x"] + bounds["width"] <= width
    assert bounds["width"] >= 150
    box.fill("Refund")
    box.press("Enter")
    page.wait_for_url("**/search?q=Refund")
    assert page.locator("mark").count() == 2
    # The reply's markup is shown as its text, with the word marked, never as markup.
    assert page.get_by_text("<b>refund</b> thanks").count() == 1
    assert page.locator(".search-text b").count() == 0
    assert page.get_by_role("link", name="b-1").count() == 2  # the message; the reply answers it
    # The box keeps the query; the page does not scroll sideways.
    assert page.get_by_role("searchbox").input_value() == "Refund"
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    # A bad query is explained on the page.
    box = page.get_by_role("searchbox")
    box.fill('"*"')
    box.press("Enter")
    page.wait_for_url("**/search?q=*")
    assert "nothing to search for" in page.locator("main [role=alert]").inner_text()
    # The only complaint: the console's note of that page's own status, 400.
    assert [p for p in problems if "status of 400" not in p] == []
