"""CSV export of what the messages page shows, streamed row by row."""
from __future__ import annotations

import csv
import io
from typing import Any, Iterable, Iterator

from flask import Blueprint, Response, jsonify, request, stream_with_context

from .filters import FilterError, MessageFilter
from .models import Message, Reply, db, utcnow
from .queries import iso

bp = Blueprint("export", __name__)

MESSAGE_COLUMNS = ("request_id", "phone", "status", "code", "code_message", "send_time",
                   "accepted_at", "delivered_at", "seen_at", "expired_at", "failed_at",
                   "cost_currency", "local_price", "original_price", "rate_type", "anomalies",
                   "replies", "last_reply_text", "last_activity_at")
REPLY_COLUMNS = ("phone", "trace_request_id", "text", "media", "file_name", "send_time",
                 "received_at")
# Rows fetched per round trip: memory stays flat whatever the export's size.
BATCH = 1000
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_FIRST = frozenset(FORMULA_STARTS)


def neutralise(value: Any) -> str:
    """A cell a spreadsheet shows as text: one that would start a formula gets a leading '."""
    # Dispatch on the exact type first: this runs for every cell of a million-row export.
    kind = type(value)
    if kind is str:
        return "'" + value if value[:1] in FORMULA_FIRST else value
    if value is None:
        return ""
    if kind is int or kind is float:
        return str(value)  # a number is data, never a formula
    text = iso(value) if hasattr(value, "tzinfo") else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


# Rows written between two yields: few enough to keep memory flat, enough that the
# per-chunk cost of the streaming machinery does not dominate.
CHUNK = 200


def _csv_lines(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def take() -> str:
        out = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return out

    # A BOM so spreadsheet programs read the file as UTF-8.
    writer.writerow(header)
    yield "\ufeff" + take()
    pending = 0
    for row in rows:
        writer.writerow([neutralise(v) for v in row])
        pending += 1
        if pending == CHUNK:
            yield take()
            pending = 0
    if pending:
        yield take()


MESSAGE_FIELDS = (Message.request_id, Message.phone, Message.status, Message.code, Message.code_message,
                  Message.send_time, Message.accepted_at, Message.delivered_at, Message.seen_at,
                  Message.expired_at, Message.failed_at, Message.cost_currency, Message.cost_local_price,
                  Message.cost_original_price, Message.cost_rate_type, Message.anomalies,
                  Message.replies_count, Message.last_reply_text, Message.last_activity_at)
STATUS_AT = MESSAGE_COLUMNS.index("status")


def message_rows(flt: MessageFilter) -> Iterator[tuple]:
    # Plain columns, not ORM objects: an export of a million rows builds no identity map.
    stmt = flt.query().with_only_columns(*MESSAGE_FIELDS).execution_options(yield_per=BATCH)
    for row in db.session.execute(stmt):
        if row[STATUS_AT] is None:
            row = (*row[:STATUS_AT], "pending", *row[STATUS_AT + 1:])
        yield row


def reply_rows(flt: MessageFilter) -> Iterator[tuple]:
    """Replies to the messages the filter selects (all replies without a filter), newest first."""
    stmt = db.select(Reply.phone, Reply.trace_request_id, Reply.text, Reply.media, Reply.file_name,
                     Reply.send_time, Reply.received_at)
    if not flt.is_empty:
        stmt = stmt.where(Reply.trace_request_id.in_(
            db.select(Message.request_id).where(*flt.conditions())))
    stmt = stmt.order_by(Reply.received_at.desc(), Reply.id.desc()).execution_options(yield_per=BATCH)
    yield from db.session.execute(stmt)


@bp.get("/export.csv")
def export_csv():
    """The filtered messages (or, with kind=replies, their replies) as a streamed CSV file."""
    kind = request.args.get("kind", "messages")
    if kind not in ("messages", "replies"):
        return jsonify({"error": "kind: must be messages or replies", "field": "kind",
                        "reason": "must be messages or replies"}), 400
    try:
        flt = MessageFilter.from_args(request.args)
    except FilterError as exc:
        return jsonify(exc.as_json()), 400
    if kind == "replies":
        lines = _csv_lines(REPLY_COLUMNS, reply_rows(flt))
    else:
        lines = _csv_lines(MESSAGE_COLUMNS, message_rows(flt))
    name = f"viberwatch-{kind}-{utcnow().date().isoformat()}.csv"
    return Response(stream_with_context(lines), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"',
                             "X-Content-Type-Options": "nosniff"})
