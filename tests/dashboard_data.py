"""Build dashboard data the way production does: through the webhooks and the JSON API."""

from __future__ import annotations

import json
from datetime import datetime

from app import tally
from app.models import Message, db

CODES = {
    "success": (0, "Successfully sent."),
    "delivered": (11001, "Viber message has delivered"),
    "seen": (11002, "Viber message has seen"),
    "expired": (11003, "Viber message has expired"),
    "failed": (9002, "Phone number error"),
}


def post(client, path: str, body: dict):
    response = client.post(path, data=json.dumps(body), content_type="application/json")
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    return response


def receipt(
    client,
    rid: str,
    status: str,
    code: int | None = None,
    cost: dict | None = None,
    send_time: str = "2024-05-01 10:00:00",
):
    default_code, message = CODES[status]
    body = {
        "status": status,
        "requestId": rid,
        "code": default_code if code is None else code,
        "message": message,
        "sendTime": send_time,
    }
    if cost:
        body["cost"] = cost
    return post(client, "/webhooks/viber/dr", body)


def reply(
    client,
    rid: str,
    phone: str,
    text: str | None = None,
    media: str | None = None,
    file_name: str | None = None,
    send_time: str = "2024-05-01 10:05:00",
):
    message = {}
    if text is not None:
        message["text"] = text
    if media is not None:
        message["media"] = media
    if file_name is not None:
        message["fileName"] = file_name
    return post(
        client,
        "/webhooks/viber/message",
        {
            "phone": phone,
            "appkey": "TexxxP6",
            "traceRequestId": rid,
            "message": message,
            "sendTime": send_time,
        },
    )


def register(client, rid: str, phone: str, text: str = "hello"):
    return post(client, "/api/messages", {"requestId": rid, "phone": phone, "text": text})


def message_with(client, rid: str, status: str | None, phone: str | None = None, **kwargs):
    """A message with a phone (registered) and receipts up to `status`."""
    if phone:
        register(client, rid, phone)
    if status:
        receipt(client, rid, status, **kwargs)


def set_activity(app, times: dict[str, datetime]) -> None:
    """Move messages' last activity (to spread them over days), then recount as after a
    bulk load: the counters must agree with the moved rows."""
    with app.app_context():
        for rid, when in times.items():
            db.session.execute(
                db.update(Message).where(Message.request_id == rid).values(last_activity_at=when)
            )
        db.session.commit()
        tally.rebuild()
