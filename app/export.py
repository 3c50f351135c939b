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


def neutralise(value: Any) -> str:
    """A cell a spreadsheet shows as text: one that would start a formula gets a leading '."""
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return str(value)  # a number is data, never a formula
    text = iso(value) if hasattr(value, "tzinfo") else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


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
    for row in rows:
        writer.writerow([neutralise(v) for v in row])
        yield take()


def message_rows(flt: MessageFilter) -> Iterator[tuple]:
    result = db.session.execute(flt.query().execution_options(yield_per=BATCH))
    for m in result.scalars():
        yield (m.request_id, m.phone, m.status or "pending", m.code, m.code_message, m.send_time,
               m.accepted_at, m.delivered_at, m.seen_at, m.expired_at, m.failed_at,
               m.cost_currency, m.cost_local_price, m.cost_original_price, m.cost_rate_type,
               m.anomalies, m.replies_count, m.last_reply_text, m.last_activity_at)


def reply_rows(flt: MessageFilter) -> Iterator[tuple]:
    """Replies to the messages the filter selects (all replies without a filter), newest first."""
    stmt = db.select(Reply)
    if not flt.is_empty:
        stmt = stmt.where(Reply.trace_request_id.in_(
            db.select(Message.request_id).where(*flt.conditions())))
    stmt = stmt.order_by(Reply.received_at.desc(), Reply.id.desc()).execution_options(yield_per=BATCH)
    for r in db.session.execute(stmt).scalars():
        yield (r.phone, r.trace_request_id, r.text, r.media, r.file_name, r.send_time, r.received_at)


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
