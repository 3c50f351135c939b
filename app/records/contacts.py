"""Each phone's thread summary (the `contact` row), kept beside the messages so
/conversations never counts the message table.

Changes are summed per phone in memory (`Changes`), then written with one upsert per phone
in phone order, so two transactions that touch the same phones lock them in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache

from sqlalchemy import and_, case, or_

from .models import Contact
from .sqlutil import insert_for, run_many

COLUMNS = (
    "phone",
    "messages_count",
    "replies_count",
    "last_activity_at",
    "last_preview",
    "last_preview_at",
    "last_reply_at",
)


@dataclass
class Change:
    """What a transaction adds to one phone's summary."""

    messages: int = 0
    replies: int = 0
    last_activity_at: datetime | None = None
    preview: str | None = None
    preview_at: datetime | None = None
    last_reply_at: datetime | None = None

    def touch(self, at: datetime) -> None:
        if self.last_activity_at is None or at > self.last_activity_at:
            self.last_activity_at = at

    def show(self, preview: str | None, at: datetime) -> None:
        """Offer the preview of a message that arrived at `at`; the latest arrival wins (on a
        tie, the one offered last)."""
        if preview is not None and (self.preview_at is None or at >= self.preview_at):
            self.preview, self.preview_at = preview, at

    def replied(self, at: datetime) -> None:
        self.replies += 1
        if self.last_reply_at is None or at > self.last_reply_at:
            self.last_reply_at = at


class Changes(dict):
    """phone -> Change."""

    def of(self, phone: str, at: datetime) -> Change:
        change = self.get(phone)
        if change is None:
            change = self[phone] = Change()
        change.touch(at)
        return change

    def rows(self) -> list[dict]:
        return [
            {
                "phone": phone,
                "messages_count": c.messages,
                "replies_count": c.replies,
                "last_activity_at": c.last_activity_at,
                "last_preview": c.preview,
                "last_preview_at": c.preview_at,
                "last_reply_at": c.last_reply_at,
            }
            for phone, c in sorted(self.items())
        ]


def _later(new, old):
    """`new` where it is set and later than `old` (or `old` is unset)."""
    return and_(new.is_not(None), or_(old.is_(None), new > old))


@cache
def upsert(dialect: str):
    """One statement that adds a Change to a phone's row, creating it."""
    stmt = insert_for(Contact, dialect)
    new, t = stmt.excluded, Contact.__table__.c
    newer_preview = and_(
        new.last_preview_at.is_not(None),
        or_(t.last_preview_at.is_(None), new.last_preview_at >= t.last_preview_at),
    )
    return stmt.on_conflict_do_update(
        index_elements=["phone"],
        set_={
            "messages_count": t.messages_count + new.messages_count,
            "replies_count": t.replies_count + new.replies_count,
            "last_activity_at": case(
                (new.last_activity_at > t.last_activity_at, new.last_activity_at),
                else_=t.last_activity_at,
            ),
            "last_preview": case((newer_preview, new.last_preview), else_=t.last_preview),
            "last_preview_at": case((newer_preview, new.last_preview_at), else_=t.last_preview_at),
            "last_reply_at": case(
                (_later(new.last_reply_at, t.last_reply_at), new.last_reply_at),
                else_=t.last_reply_at,
            ),
        },
    )


def write(conn, changes: Changes, chunk: int = 5000) -> None:
    """Add every change to its phone's row, in phone order, through `conn`."""
    rows = changes.rows()
    stmt = upsert(conn.dialect.name)
    for start in range(0, len(rows), chunk):
        run_many(conn, stmt, rows[start : start + chunk])
