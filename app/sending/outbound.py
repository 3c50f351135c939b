"""Sending a text from viberwatch: record the attempt, call NXCLOUD, register what was sent.

Also the session window of a phone: Viber lets a business answer with Session messages
for 24 hours after the user's last message, at most 5 in a row without a user reply and
at most 60 per session. No `request` here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app

from .. import ingest
from ..auth import audit
from ..core.payloads import Invalid, parse_tags
from ..core.times import utcnow
from ..records.models import Message, Reply, SendAttempt, db
from . import nxcloud

WINDOW = timedelta(hours=24)
MAX_CONSECUTIVE = 5
MAX_PER_SESSION = 60
MAX_TEXT = 1000  # Viber's limit for a text message's characters
REPLY_SCAN_LIMIT = 500


@dataclass(frozen=True)
class SessionWindow:
    open: bool
    last_reply_at: datetime | None = None
    closes_at: datetime | None = None
    started_at: datetime | None = None
    sent_in_session: int = 0
    consecutive: int = 0  # sent since the user's last reply

    @property
    def remaining_consecutive(self) -> int:
        return max(0, MAX_CONSECUTIVE - self.consecutive) if self.open else 0

    @property
    def remaining_session(self) -> int:
        return max(0, MAX_PER_SESSION - self.sent_in_session) if self.open else 0

    @property
    def remaining(self) -> int:
        return min(self.remaining_consecutive, self.remaining_session)

    def warnings(self) -> list[str]:
        """Why a Session message sent now would break Viber's rules; empty when it would not."""
        if self.last_reply_at is None:
            return [
                "This user has never written: no session is open, so a Session message "
                "will be refused."
            ]
        if not self.open:
            return [
                "The 24-hour session window closed (no reply from the user since "
                f"{self.last_reply_at:%Y-%m-%d %H:%M} UTC); a Session message will be refused."
            ]
        found = []
        if self.consecutive >= MAX_CONSECUTIVE:
            found.append(
                f"{self.consecutive} messages were sent since the user's last reply; "
                f"at most {MAX_CONSECUTIVE} in a row are allowed without a reply."
            )
        if self.sent_in_session >= MAX_PER_SESSION:
            found.append(
                f"{self.sent_in_session} messages were sent in this session; "
                f"at most {MAX_PER_SESSION} are allowed."
            )
        return found


def session_window(phone: str, now: datetime | None = None) -> SessionWindow:
    """The phone's session: opened by a user message, kept open while the user writes within 24 h."""
    now = now or utcnow()
    replies = list(
        db.session.execute(
            db.select(Reply.received_at)
            .where(Reply.phone == phone)
            .order_by(Reply.received_at.desc())
            .limit(REPLY_SCAN_LIMIT)
        ).scalars()
    )
    if not replies:
        return SessionWindow(open=False)
    last = replies[0]
    started = last
    for earlier in replies[1:]:
        if started - earlier >= WINDOW:
            break
        started = earlier
    closes = last + WINDOW
    if now >= closes:
        return SessionWindow(open=False, last_reply_at=last, closes_at=closes, started_at=started)
    sent = list(
        db.session.execute(
            db.select(Message.registered_at).where(
                Message.phone == phone, Message.registered_at >= started
            )
        ).scalars()
    )
    return SessionWindow(
        open=True,
        last_reply_at=last,
        closes_at=closes,
        started_at=started,
        sent_in_session=len(sent),
        consecutive=sum(1 for t in sent if t > last),
    )


@dataclass
class Outcome:
    """What happened to one send, for a page or the command line."""

    attempt: SendAttempt | None = None
    warnings: list[str] = field(default_factory=list)
    needs_confirmation: bool = False
    invalid: str | None = None  # a problem with the form itself; nothing was sent
    invalid_field: str | None = None  # the field `invalid` is about
    tags: tuple[str, ...] = ()  # the tags the sent message is registered with

    @property
    def sent(self) -> bool:
        return self.attempt is not None and self.attempt.outcome == "sent"


def send_checks(settings: nxcloud.Settings, phone: str) -> list[str]:
    """Warnings to confirm before sending: only Session messages are bound to the window."""
    if settings.rate_type != "Session":
        return []
    return session_window(phone).warnings()


def _invalid(field: str, reason: str) -> Outcome:
    return Outcome(invalid=f"{field}: {reason}", invalid_field=field)


def send_text(
    phone: str,
    text: str,
    *,
    tags: str | list[str] | None = None,
    tags_field: str = "tags",
    confirmed: bool = False,
    sent_by: str | None = None,
) -> Outcome:
    """Send a text to `phone` through NXCLOUD and register the returned requestId, with
    `tags` (comma-separated, or a list; checked as registrations check them, a bad one
    named as `tags_field`).

    A send that would break the session rules is held back until `confirmed`.
    """
    phone = (phone or "").strip()
    text = (text or "").strip()
    if not phone:
        return _invalid("phone", "must not be empty")
    if not text:
        return _invalid("text", "must not be empty")
    if len(text) > MAX_TEXT:
        return _invalid("text", f"longer than {MAX_TEXT} characters")
    try:
        parsed_tags = parse_tags(tags or None, tags_field)
    except Invalid as exc:
        return _invalid(exc.field, exc.reason)
    settings = nxcloud.Settings.from_config(current_app.config)
    warnings = send_checks(settings, phone)
    if warnings and not confirmed:
        return Outcome(warnings=warnings, needs_confirmation=True, tags=parsed_tags)
    # Kept before the call: if this process dies mid-send the attempt still shows, as pending.
    attempt = SendAttempt(
        phone=phone,
        text=text,
        rate_type=settings.rate_type,
        created_at=utcnow(),
        outcome="pending",
        user=sent_by,
    )
    db.session.add(attempt)
    db.session.commit()
    result = nxcloud.send_text(settings, phone, text)
    attempt.finished_at = utcnow()
    attempt.error_code = result.code
    if result.ok:
        attempt.outcome = "sent"
        attempt.request_id = result.request_id
    else:
        attempt.outcome = "failed"
        attempt.error_kind = result.kind
        attempt.error_reason = result.reason
        attempt.error_solution = result.solution
    db.session.add(
        audit.entry(
            "send",
            phone,
            {"outcome": attempt.outcome, "requestId": attempt.request_id, "attempt": attempt.id},
        )
    )
    db.session.commit()
    if result.ok:
        _register(attempt, settings, parsed_tags)
    return Outcome(attempt=attempt, warnings=warnings, tags=parsed_tags)


def _register(attempt: SendAttempt, settings: nxcloud.Settings, tags: tuple[str, ...]) -> None:
    """Register the sent message the way a sending system would, so the raw record, the
    activity log and the live thread all get it."""
    registration = {
        "requestId": attempt.request_id,
        "phone": attempt.phone,
        "text": attempt.text,
        "appkey": settings.appkey,
        "functionType": "text",
    }
    if tags:
        registration["tags"] = list(tags)
    body = json.dumps(
        registration,
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    result = ingest.ingest("register", body, "application/json", {"User-Agent": "viberwatch-send"})
    if not result.ok:
        attempt.error_reason = f"sent, but not registered: {result.error['error']}"
        db.session.commit()


def attempts_for(phone: str, *, failed_only: bool = False, limit: int = 20) -> list[SendAttempt]:
    """The phone's latest send attempts, newest first."""
    query = db.select(SendAttempt).where(SendAttempt.phone == phone)
    if failed_only:
        query = query.where(SendAttempt.outcome != "sent")
    return list(
        db.session.execute(
            query.order_by(SendAttempt.created_at.desc(), SendAttempt.id.desc()).limit(limit)
        ).scalars()
    )
