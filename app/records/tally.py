"""Message counts per (day, status, code, anomaly), maintained beside the messages.

The counters above the messages table must not count a million rows on every page view.
The ingest transaction that changes messages sums their moves (`Moves`) and writes each
tally row once, so the tally and the messages commit (or roll back) together; `rebuild`
recomputes it from the messages after a bulk load.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

from sqlalchemy import func

from .models import Message, MessageTally, db
from .sqlutil import add_counts

Key = tuple[date, str, int, bool]


KEY = ("day", "status", "code", "anomaly")


def key_of(m) -> Key:
    """Where a message is counted: the UTC day of its last activity, status, code, anomaly
    (of a Message, or any row with those columns)."""
    return (
        m.last_activity_at.date(),
        m.status or "pending",
        -1 if m.code is None else m.code,
        bool(m.anomaly),
    )


class Moves(Counter):
    """The changes of a transaction, summed per tally row: each row is written once."""

    def move(self, before: Key | None, after: Key) -> None:
        """Count a message under `after` instead of `before` (None: a message new to the tally)."""
        if before != after:
            self[after] += 1
            if before is not None:
                self[before] -= 1

    def write(self, conn) -> None:
        # A fixed lock order over the tally rows, so two transactions cannot deadlock on them.
        rows = [dict(zip(KEY, key, strict=False), n=n) for key, n in sorted(self.items()) if n]
        add_counts(conn, MessageTally, KEY, ("n",), rows)


def recounted() -> dict[Key, int]:
    """The tally counted from the messages table."""
    status = func.coalesce(Message.status, "pending")
    code = func.coalesce(Message.code, -1)
    day = func.date(Message.last_activity_at)
    rows = db.session.execute(
        db.select(day, status, code, Message.anomaly, func.count()).group_by(
            day, status, code, Message.anomaly
        )
    ).all()
    return {
        (d if isinstance(d, date) else date.fromisoformat(d), s, c, bool(a)): n
        for d, s, c, a, n in rows
    }


def rebuild() -> int:
    """Recount everything from the messages table (after a bulk load); returns the row count."""
    counts = recounted()
    db.session.execute(db.delete(MessageTally))
    add_counts(
        db.session.connection(),
        MessageTally,
        KEY,
        ("n",),
        [dict(zip(KEY, key, strict=False), n=n) for key, n in sorted(counts.items())],
    )
    db.session.commit()
    return len(counts)
