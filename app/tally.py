"""Message counts per (day, status, code, anomaly), maintained beside the messages.

The counters above the messages table must not count a million rows on every page view.
`move` runs inside the transaction that changes a message, so the tally and the messages
commit (or roll back) together; `rebuild` recomputes it from the messages after a bulk load.
"""
from __future__ import annotations

from datetime import date
from typing import Optional

from sqlalchemy import func

from .models import Message, MessageTally, db
from .sqlutil import add_counts

Key = tuple[date, str, int, bool]


def key_of(m: Message) -> Key:
    """Where a message is counted: the UTC day of its last activity, status, code, anomaly."""
    return (m.last_activity_at.date(), m.status or "pending",
            -1 if m.code is None else m.code, bool(m.anomaly))


def _bump(key: Key, delta: int) -> None:
    day, status, code, anomaly = key
    add_counts(MessageTally, {"day": day, "status": status, "code": code, "anomaly": anomaly}, {"n": delta})


def move(before: Optional[Key], after: Key) -> None:
    """Count a message under `after` instead of `before` (None: a message new to the tally)."""
    if before == after:
        return
    # A fixed lock order over the tally rows, so two transactions cannot deadlock on them.
    for key, delta in sorted([(after, 1)] + ([(before, -1)] if before else [])):
        _bump(key, delta)


def rebuild() -> int:
    """Recount everything from the messages table (after a bulk load); returns the row count."""
    status = func.coalesce(Message.status, "pending")
    code = func.coalesce(Message.code, -1)
    day = func.date(Message.last_activity_at)
    db.session.execute(db.delete(MessageTally))
    rows = db.session.execute(
        db.select(day, status, code, Message.anomaly, func.count())
        .group_by(day, status, code, Message.anomaly)).all()
    for d, s, c, a, n in rows:
        db.session.add(MessageTally(day=d if isinstance(d, date) else date.fromisoformat(d),
                                    status=s, code=c, anomaly=bool(a), n=n))
    db.session.commit()
    return len(rows)
