"""Rendered rows kept per process (app/dashboard/rendered.py): a kept row is served only while
every column of its record is as it was; any change renders it again."""

from __future__ import annotations

import re

from flask import render_template

from app.dashboard import rendered
from app.records.models import Activity, Message, db
from support import bodies
from support.dashboard_data import message_with, post, receipt, reply

ROW_RE = re.compile(r'<tr id="msg-(?P<rid>[^"]+)".*?</tr>', re.S)


def page_row(client, rid: str, query: str = "") -> str:
    html = client.get("/" + query).get_data(as_text=True)
    return next(m.group(0) for m in ROW_RE.finditer(html) if m.group("rid") == rid)


def fresh_row(app, rid: str) -> str:
    with app.test_request_context("/"):
        m = db.session.get(Message, rid)
        return render_template("partials/_message_row.html", m=m).strip()


def test_a_kept_row_follows_every_change_of_its_message(client, app):
    rendered.message_row.clear()
    message_with(client, "kept-1", "success", phone="79000000001")
    first = page_row(client, "kept-1")
    assert first == fresh_row(app, "kept-1")
    assert page_row(client, "kept-1") == first  # served again, unchanged
    steps = [
        lambda: receipt(client, "kept-1", "delivered", code=11001),
        lambda: receipt(client, "kept-1", "seen", code=11002),
        lambda: reply(client, "kept-1", "79000000001", text="thanks"),
        lambda: post(
            client,
            bodies.REGISTER,
            bodies.registration("kept-1", "79000000001", tags=["spring"], appkey="APP9"),
        ),
        lambda: receipt(client, "kept-1", "failed", code=9001),  # failed beside seen: an anomaly
    ]
    shown = [first]
    for step in steps:
        step()
        row = page_row(client, "kept-1")
        assert row == fresh_row(app, "kept-1")
        assert row not in shown
        shown.append(row)
    assert "badge-seen" in shown[2] and ">1</td>" in shown[3] and ">spring</a>" in shown[4]
    assert "anomaly" in shown[5]


def test_any_column_changed_renders_the_row_again(client, app):
    rendered.message_row.clear()
    message_with(client, "kept-2", "delivered", phone="79000000002")
    with app.test_request_context("/"):
        m = db.session.get(Message, "kept-2")
        kept = rendered.message_row(m)
        assert rendered.message_row(m) is kept
        for column in rendered.message_row.columns:
            before = getattr(m, column)
            if column == "request_id":
                continue
            changed = {
                int: 7,
                bool: not before,
                str: "x",
                float: 1.5,
            }.get(type(before), before)
            if changed is before:  # None or a time: any other value of the column's kind
                changed = (
                    m.last_activity_at.replace(year=2001)
                    if column.endswith("_at")
                    else {"code": 5, "cost_local_price": 0.5, "cost_original_price": 0.25}.get(
                        column, "y"
                    )
                )
            setattr(m, column, changed)
            again = rendered.message_row(m)
            assert again is not kept, column
            assert again == render_template("partials/_message_row.html", m=m), column
            kept = again
        db.session.rollback()


def test_links_follow_the_script_root(client, app):
    rendered.message_row.clear()
    message_with(client, "kept-3", "seen", phone="79000000003")
    plain = page_row(client, "kept-3")
    under = client.get("/", environ_overrides={"SCRIPT_NAME": "/vw"}).get_data(as_text=True)
    assert 'href="/messages/kept-3"' in plain
    assert 'href="/vw/messages/kept-3"' in under


def test_rows_kept_are_bounded(client, app, monkeypatch):
    monkeypatch.setattr(rendered.message_row, "kept", 3)
    rendered.message_row.clear()
    for i in range(6):
        message_with(client, f"kept-b{i}", "seen", phone=f"7900000001{i}")
    client.get("/")
    assert len(rendered.message_row._rows) == 3
    # The three kept are the last rendered: the page's last (oldest) rows.
    assert {k[0] for k in rendered.message_row._rows} == {"kept-b0", "kept-b1", "kept-b2"}


def test_the_feed_keeps_items_by_their_activity(client, app):
    rendered.feed_item.clear()
    message_with(client, "kept-f", "seen", phone="79000000020")
    html = client.get("/").get_data(as_text=True)
    with app.test_request_context("/"):
        activity = db.session.execute(db.select(Activity).order_by(Activity.id.desc())).scalars()
        items = [render_template("partials/_feed_item.html", a=a) for a in activity]
    assert items and all(item in html for item in items[:50])
    assert len(rendered.feed_item._rows) == len(items[:50])
