"""Conversations: phones by latest activity, and one phone's chat-style thread."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, render_template, request
from sqlalchemy import tuple_

from ..records.models import Contact, Message, Reply, db
from ..webhooks.views import webhook_urls
from .filters import FilterError, prefix_condition
from .listing import decode_cursor, encode_cursor

bp = Blueprint("conversations", __name__, url_prefix="/conversations")

CONTACTS_PAGE = 50
THREAD_LIMIT = 200


def contacts_page(phone: str | None, after: str | None) -> tuple[list[Contact], str | None]:
    """Phones by latest activity (the Contact summary table), keyset-paged."""
    stmt = db.select(Contact)
    if phone:
        stmt = stmt.where(prefix_condition(Contact.phone, phone))
    if after:
        stmt = stmt.where(
            tuple_(Contact.last_activity_at, Contact.phone) < decode_cursor(after, "after")
        )
    rows = list(
        db.session.execute(
            stmt.order_by(Contact.last_activity_at.desc(), Contact.phone.desc()).limit(
                CONTACTS_PAGE + 1
            )
        ).scalars()
    )
    more = len(rows) > CONTACTS_PAGE
    rows = rows[:CONTACTS_PAGE]
    return rows, (encode_cursor(rows[-1].last_activity_at, rows[-1].phone) if more else None)


@dataclass
class ThreadItem:
    at: datetime
    kind: str  # "out" | "in"
    item: Message | Reply


@bp.app_template_global()
def message_time(m: Message) -> datetime:
    """Where an outbound message sits in its thread: the first we heard of it.

    That is its registration, its first receipt or the first reply naming it, whichever came
    first, so it is never later than a reply to it, even when the sending system registers
    the message after its receipts or its answer.
    """
    return m.created_at


def thread_of(phone: str, limit: int = THREAD_LIMIT) -> tuple[list[ThreadItem], bool]:
    """The latest `limit` outbound messages and replies of a phone, oldest first.

    Both sides are timed by our own clock (first heard of, reply arrival), never by
    NXCLOUD's sendTime, whose zone is a guess (SENDTIME_TZ). Returns (items, whether older
    ones exist).
    """
    messages = db.session.execute(
        db.select(Message)
        .where(Message.phone == phone)
        .order_by(Message.last_activity_at.desc(), Message.request_id.desc())
        .limit(limit + 1)
    ).scalars()
    replies = db.session.execute(
        db.select(Reply)
        .where(Reply.phone == phone)
        .order_by(Reply.received_at.desc(), Reply.id.desc())
        .limit(limit + 1)
    ).scalars()
    items = [ThreadItem(message_time(m), "out", m) for m in messages]
    items += [ThreadItem(r.received_at, "in", r) for r in replies]
    # An outbound message sorts before a reply of the same instant: the answer follows it.
    items.sort(
        key=lambda t: (
            t.at,
            0 if t.kind == "out" else 1,
            t.item.request_id if t.kind == "out" else str(t.item.id).zfill(20),
        )
    )
    older = len(items) > limit
    return items[-limit:], older


@bp.get("")
def index():
    """Phones ordered by latest activity, with the last message preview and counts."""
    phone = "".join((request.args.get("phone") or "").split()) or None
    try:
        rows, next_after = contacts_page(phone, request.args.get("after") or None)
    except FilterError as exc:
        return render_template(
            "conversations/index.html",
            rows=[],
            next_after=None,
            phone=phone,
            error=exc,
            webhook_urls=None,
            after=None,
            page_size=CONTACTS_PAGE,
        ), 400
    after = request.args.get("after") or None
    # No row on the first unfiltered page: nothing has arrived yet, say where to send it.
    empty = not rows and not phone and not after
    return render_template(
        "conversations/index.html",
        rows=rows,
        next_after=next_after,
        phone=phone,
        error=None,
        webhook_urls=webhook_urls() if empty else None,
        after=after,
        page_size=CONTACTS_PAGE,
    )


@bp.get("/<path:phone>")
def thread(phone: str):
    """One phone's thread: outbound messages with their live status, and the replies."""
    items, older = thread_of(phone)
    contact = db.session.get(Contact, phone)
    status = 200 if (items or contact) else 404
    return render_template(
        "conversations/thread.html",
        phone=phone,
        items=items,
        older=older,
        contact=contact,
        limit=THREAD_LIMIT,
    ), status
