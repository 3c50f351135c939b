"""Feed bodies through the real ingest pipeline as if they arrived at a chosen time."""

from __future__ import annotations

from datetime import datetime

from app import ingest

from . import bodies

SEND_TIME = "2026-03-01 20:00:00"


def receive_at(at: datetime, endpoint: str, body: dict) -> ingest.Result:
    """`ingest.ingest` of one body, with the received time set by the test."""
    return ingest.ingest(
        endpoint, bodies.encoded(body), "application/json", {}, "127.0.0.1", received_at=at
    )


def receipt(at: datetime, rid: str, status: str, **options) -> ingest.Result:
    """bodies.receipt(rid, status, **options) received at `at` (sent at SEND_TIME unless told)."""
    body = bodies.receipt(rid, status, **{"send_time": SEND_TIME, **options})
    return receive_at(at, "dr", body)


def reply(at: datetime, rid: str, phone: str, text: str, **options) -> ingest.Result:
    """bodies.reply(rid, phone, text, **options) received at `at` (sent at SEND_TIME unless
    told)."""
    body = bodies.reply(rid, phone, text, **{"appkey": "APP", "send_time": SEND_TIME, **options})
    return receive_at(at, "message", body)


def register(at: datetime, rid: str, phone: str, text: str = "hello", **extra) -> ingest.Result:
    """bodies.registration(rid, phone, text, **extra) received at `at`."""
    return receive_at(at, "register", bodies.registration(rid, phone, text, **extra))
