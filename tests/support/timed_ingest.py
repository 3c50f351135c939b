"""Feed bodies through the real ingest pipeline as if they arrived at a chosen time."""

from __future__ import annotations

import json
from datetime import datetime

from app.records import ingest

from . import bodies

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
    body = bodies.receipt(rid, status, code, message, cost=cost, send_time=SEND_TIME)
    return receive_at(at, "dr", body)


def reply(at: datetime, rid: str, phone: str, text: str) -> ingest.Result:
    return receive_at(
        at, "message", bodies.reply(rid, phone, text, appkey="APP", send_time=SEND_TIME)
    )


def register(at: datetime, rid: str, phone: str, text: str = "hello") -> ingest.Result:
    return receive_at(at, "register", bodies.registration(rid, phone, text))
