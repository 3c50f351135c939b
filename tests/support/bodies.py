"""The bodies NXCLOUD posts to the webhooks (and the registration the JSON API takes), built
with the fields a test cares about and documented values for the rest."""

from __future__ import annotations

import json

DR = "/webhooks/viber/dr"
REPLY = "/webhooks/viber/message"
REGISTER = "/api/messages"

# The code and message NXCLOUD sends with each status.
CODES = {
    "success": (0, "Successfully sent."),
    "delivered": (11001, "Viber message has delivered"),
    "seen": (11002, "Viber message has seen"),
    "expired": (11003, "Viber message has expired"),
    "failed": (11000, "Viber send error"),
}
COST = {"currency": "USD", "localPrice": 0.012, "originalPrice": 0.012, "rateType": "Transactional"}
SEND_TIME = "2024-05-01 10:00:00"
REPLY_TIME = "2024-05-01 10:05:00"


def receipt(
    rid: str,
    status: str = "delivered",
    code: int | None = None,
    message: str | None = None,
    *,
    cost: dict | bool | None = None,
    send_time: str = SEND_TIME,
    pad: int = 0,
    **extra,
) -> dict:
    """A delivery receipt; code and message default to the ones NXCLOUD sends with `status`
    (a status it never sends gets code 0), `cost=True` adds a documented cost. Fields NXCLOUD
    does not send follow: `pad=n` adds a "note" of n characters (a body that big, kept and
    not used), `extra` adds its fields as given."""
    default_code, default_message = CODES.get(status, (0, "not a status NXCLOUD sends"))
    body = {
        "status": status,
        "requestId": rid,
        "code": default_code if code is None else code,
        "message": message or default_message,
        "sendTime": send_time,
    }
    if cost:
        body["cost"] = COST if cost is True else cost
    if pad:
        body["note"] = "x" * pad
    return {**body, **extra}


def reply(
    rid: str,
    phone: str,
    text: str | None = None,
    *,
    media: str | None = None,
    file_name: str | None = None,
    appkey: str = "TexxxP6",
    send_time: str = REPLY_TIME,
) -> dict:
    """A user's reply to the message `rid`: a text, a media URL, a file name, or several."""
    message = {}
    if text is not None:
        message["text"] = text
    if media is not None:
        message["media"] = media
    if file_name is not None:
        message["fileName"] = file_name
    return {
        "phone": phone,
        "appkey": appkey,
        "traceRequestId": rid,
        "message": message,
        "sendTime": send_time,
    }


def registration(rid: str, phone: str, text: str = "hello", **extra) -> dict:
    """What POST /api/messages takes: the phone and text of a message sent elsewhere."""
    return {"requestId": rid, "phone": phone, "text": text, **extra}


def encoded(body: dict) -> bytes:
    """A body as the bytes a test posts or stores."""
    return json.dumps(body).encode()


def post_json(client, path, body, content_type="application/json", **kwargs):
    """A Flask test client's POST of a body (a dict is sent as JSON, bytes as they are)."""
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(path, data=data, content_type=content_type, **kwargs)
