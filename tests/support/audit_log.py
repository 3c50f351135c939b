"""Reading the audit log the way a test checks it: the records written since a mark."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func

from app.records.models import AuditRecord, User, db


@dataclass(frozen=True)
class Entry:
    id: int
    at: datetime
    user_id: int | None
    username: str
    address: str | None
    action: str
    target: str | None
    details: dict


def _entry(row: AuditRecord) -> Entry:
    return Entry(
        id=row.id,
        at=row.at,
        user_id=row.user_id,
        username=row.username,
        address=row.address,
        action=row.action,
        target=row.target,
        details=json.loads(row.details) if row.details else {},
    )


def mark(app) -> int:
    """The id of the newest record so far (0 for none)."""
    with app.app_context():
        return db.session.execute(
            db.select(func.coalesce(func.max(AuditRecord.id), 0))
        ).scalar_one()


def entries(app, since: int = 0) -> list[Entry]:
    """The records after the mark `since`, oldest first."""
    with app.app_context():
        rows = db.session.execute(
            db.select(AuditRecord).where(AuditRecord.id > since).order_by(AuditRecord.id)
        ).scalars()
        return [_entry(r) for r in rows]


def only_new(app, since: int, action: str) -> Entry:
    """The one record written after `since`, which must be of `action`."""
    new = entries(app, since)
    assert [e.action for e in new] == [action], new
    return new[0]


def count(app) -> int:
    with app.app_context():
        return db.session.execute(db.select(func.count(AuditRecord.id))).scalar_one()


def user_id(app, username: str) -> int:
    with app.app_context():
        return db.session.execute(db.select(User.id).where(User.username == username)).scalar_one()
