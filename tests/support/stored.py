"""What the record says of messages, read as ingest reads it."""

from __future__ import annotations

from app.ingest.stored import (
    RECEIPT_COLUMNS,
    REPLY_COLUMNS,
    receipt_facts,
    registration_of,
    reply_facts,
)
from app.ingest.transaction import sendtime_zone
from app.records.derivation import message_columns
from app.records.models import Message, Receipt, Reply, db
from app.records.sqlutil import select_in


def stored_columns(request_ids: list[str]) -> dict[str, dict]:
    """Each message's columns as derived now from its stored receipts, replies and
    registration (what a batch would write for it)."""
    conn = db.session.connection()
    t = Message.__table__.c
    rows = conn.execute(db.select(Message.__table__).where(t.request_id.in_(request_ids))).all()
    receipts = receipt_facts(
        select_in(conn, Receipt.__table__, RECEIPT_COLUMNS, "request_id", request_ids)
    )
    replies = reply_facts(
        select_in(conn, Reply.__table__, REPLY_COLUMNS, "trace_request_id", request_ids)
    )
    return {
        row.request_id: message_columns(
            receipts.get(row.request_id, {}).values(),
            replies.get(row.request_id, {}).values(),
            registration_of(row),
            row.created_at,
            sendtime_zone(),
        )
        for row in rows
    }
