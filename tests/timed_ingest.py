"""Feed bodies through the real ingest pipeline as if they arrived at a chosen time."""

from __future__ import annotations

import json
from datetime import datetime

from app import ingest

SEND_TIME = "2026-03-01 20:00:00"


def receive_at(at: datetime, endpoint: str, body: dict) -> ingest.Result:
    """`ingest.ingest` of one body, with the received time set by the test."""
    return ingest.ingest(
        endpoint, json.dumps(body).encode(), "application/json", {}, "127.0.0.1", received_at=at
    )


def receipt(
    at: datetime,
    rid: str,
    status: str,
    code: int | None = None,
    message: str | None = None,
    cost: dict | None = None,
) -> ingest.Result:
    codes = {
        "success": (0, "Successfully sent."),
        "delivered": (11001, "Viber message has delivered"),
        "seen": (11002, "Viber message has seen"),
        "expired": (11003, "Viber message has expired"),
        "failed": (11000, "Viber send error"),
    }
    default_code, default_message = codes[status]
    body = {
        "status": status,
        "requestId": rid,
        "code": default_code if code is None else code,
        "message": message or default_message,
        "sendTime": SEND_TIME,
    }
    if cost:
        body["cost"] = cost
    return receive_at(at, "dr", body)


def reply(at: datetime, rid: str, phone: str, text: str) -> ingest.Result:
    return receive_at(
        at,
        "message",
        {
            "phone": phone,
            "appkey": "APP",
            "traceRequestId": rid,
            "message": {"text": text},
            "sendTime": SEND_TIME,
        },
    )


def register(at: datetime, rid: str, phone: str, text: str = "hello") -> ingest.Result:
    return receive_at(at, "register", {"requestId": rid, "phone": phone, "text": text})
