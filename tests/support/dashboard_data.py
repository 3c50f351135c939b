"""Build dashboard data the way production does: through the webhooks and the JSON API."""

from __future__ import annotations

from datetime import datetime

from app.records import tally
from app.records.models import Message, db

from . import bodies
from .bodies import post_json

# The failed receipt these pages show: NXCLOUD's phone-number error.
PHONE_ERROR = (9002, "Phone number error")


def post(client, path: str, body: dict):
    response = post_json(client, path, body)
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    return response


def receipt(client, rid: str, status: str, code: int | None = None, **options):
    """POST bodies.receipt(rid, status, code, **options) to the receipt webhook; a failed one
    carries NXCLOUD's phone-number error (its code unless the test names another)."""
    if status == "failed":
        code = PHONE_ERROR[0] if code is None else code
        options.setdefault("message", PHONE_ERROR[1])
    return post(client, bodies.DR, bodies.receipt(rid, status, code, **options))


def reply(client, rid: str, phone: str, text: str | None = None, **options):
    """POST bodies.reply(rid, phone, text, **options) to the reply webhook."""
    return post(client, bodies.REPLY, bodies.reply(rid, phone, text, **options))


def register(client, rid: str, phone: str, text: str = "hello"):
    """POST bodies.registration(rid, phone, text) to the JSON API."""
    return post(client, bodies.REGISTER, bodies.registration(rid, phone, text))


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
