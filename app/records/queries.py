"""Read side: what pages and the JSON API show of a message."""

from __future__ import annotations

from ..core.status import describe_code
from ..core.times import iso
from .models import Message, RawBody, Receipt, Reply, db


def get_message(request_id: str) -> Message | None:
    return db.session.get(Message, request_id)


def receipts_of(request_id: str) -> list[Receipt]:
    """Receipts in arrival order."""
    return list(
        db.session.execute(
            db.select(Receipt)
            .where(Receipt.request_id == request_id)
            .order_by(Receipt.received_at, Receipt.id)
        ).scalars()
    )


def replies_of(request_id: str) -> list[Reply]:
    return list(
        db.session.execute(
            db.select(Reply)
            .where(Reply.trace_request_id == request_id)
            .order_by(Reply.received_at, Reply.id)
        ).scalars()
    )


def raw_bodies_of(request_id: str) -> list[RawBody]:
    return list(
        db.session.execute(
            db.select(RawBody).where(RawBody.request_id == request_id).order_by(RawBody.id)
        ).scalars()
    )


def cost_json(currency, local_price, original_price, rate_type) -> dict | None:
    if currency is None and local_price is None and original_price is None and rate_type is None:
        return None
    return {
        "currency": currency,
        "localPrice": local_price,
        "originalPrice": original_price,
        "rateType": rate_type,
    }


def receipt_json(r: Receipt) -> dict:
    code = describe_code(r.code)
    return {
        "status": r.status,
        "code": r.code,
        "message": r.message,
        "codeMessage": code.message,
        "solution": code.solution,
        "sendTime": r.send_time_raw,
        "sendTimeUtc": iso(r.send_time),
        "receivedAt": iso(r.received_at),
        "timesReceived": r.times_received,
        "lastReceivedAt": iso(r.last_received_at),
        "cost": cost_json(
            r.cost_currency, r.cost_local_price, r.cost_original_price, r.cost_rate_type
        )
        if r.has_cost
        else None,
    }


def reply_json(r: Reply) -> dict:
    return {
        "phone": r.phone,
        "appkey": r.appkey,
        "traceRequestId": r.trace_request_id,
        "message": {
            k: v
            for k, v in (("text", r.text), ("media", r.media), ("fileName", r.file_name))
            if v is not None
        },
        "sendTime": r.send_time_raw,
        "sendTimeUtc": iso(r.send_time),
        "receivedAt": iso(r.received_at),
        "timesReceived": r.times_received,
    }


STATUS_TIME_COLUMNS = (
    ("success", "accepted_at"),
    ("delivered", "delivered_at"),
    ("seen", "seen_at"),
    ("failed", "failed_at"),
    ("expired", "expired_at"),
)


def status_times(m: Message) -> dict:
    return {
        status: iso(getattr(m, column))
        for status, column in STATUS_TIME_COLUMNS
        if getattr(m, column) is not None
    }


def message_json(m: Message) -> dict:
    code = describe_code(m.code) if m.code is not None else None
    return {
        "requestId": m.request_id,
        "status": m.status,
        "phone": m.phone,
        "code": m.code,
        "codeMessage": code.message if code else None,
        "solution": code.solution if code else None,
        "message": m.code_message,
        "statusTimes": status_times(m),
        "sendTime": m.send_time_raw,
        "sendTimeUtc": iso(m.send_time),
        "cost": cost_json(
            m.cost_currency, m.cost_local_price, m.cost_original_price, m.cost_rate_type
        ),
        "anomalies": m.anomalies.split("; ") if m.anomalies else [],
        "registeredAt": iso(m.registered_at),
        "text": m.text,
        "appkey": m.appkey,
        "functionType": m.function_type,
        "rateType": m.rate_type,
        "tags": m.tags.split(",") if m.tags else [],
        "lastActivityAt": iso(m.last_activity_at),
        "receipts": [receipt_json(r) for r in receipts_of(m.request_id)],
        "replies": [reply_json(r) for r in replies_of(m.request_id)],
    }
