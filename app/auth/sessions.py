"""Sign-ins: each a random token in the session cookie, its hash in `user_session`, ended for
good at sign-out, by a password change, or past LOGIN_MAX_AGE."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from blinker import Namespace
from flask import current_app
from flask_login import LoginManager
from sqlalchemy import or_

from ..core.times import utcnow
from ..records.models import User, UserSession, db

login_manager = LoginManager()

# Sent after sign-ins were ended, so this process's live sockets are checked at once
# (other processes find out within LIVE_SESSION_CHECK_INTERVAL).
signals = Namespace()
sessions_ended = signals.signal("sessions-ended")


def _session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(user: User) -> None:
    """A new sign-in for `user`: a random token for the cookie, its hash in user_session."""
    now = utcnow()
    token = secrets.token_urlsafe(32)
    db.session.add(UserSession(id=_session_id(token), user_id=user.id, created_at=now))
    # The user's sign-ins that ended or ran out need not be kept.
    db.session.execute(
        db.delete(UserSession).where(
            UserSession.user_id == user.id,
            or_(UserSession.ended_at.is_not(None), UserSession.created_at < now - _max_age()),
        )
    )
    db.session.commit()
    user.session_token = token


def end_sessions(*conditions) -> int:
    """End the open sign-ins matching `conditions` (and commit); returns how many."""
    ended = db.session.execute(
        db.update(UserSession)
        .where(UserSession.ended_at.is_(None), *conditions)
        .values(ended_at=utcnow()),
        execution_options={"preserve_rowcount": True},
    ).rowcount
    db.session.commit()
    if ended:
        sessions_ended.send(current_app._get_current_object())
    return ended


def end_session(token: str | None) -> None:
    if token:
        end_sessions(UserSession.id == _session_id(token))


def _max_age() -> timedelta:
    return timedelta(seconds=current_app.config["LOGIN_MAX_AGE"])


def open_sessions(ids: set[str]) -> set[str]:
    """Which of these session ids (hashes) are still signed in."""
    if not ids:
        return set()
    return set(
        db.session.execute(
            db.select(UserSession.id).where(
                UserSession.id.in_(sorted(ids)),
                UserSession.ended_at.is_(None),
                UserSession.created_at >= utcnow() - _max_age(),
            )
        ).scalars()
    )


def session_id_of(user) -> str | None:
    token = getattr(user, "session_token", None)
    return _session_id(token) if token else None


@login_manager.user_loader
def load_user(token: str) -> User | None:
    """The user of an open sign-in: the cookie's token must name a session not ended."""
    if not token or len(token) > 64:
        return None
    row = db.session.execute(
        db.select(User)
        .join(UserSession, UserSession.user_id == User.id)
        .where(
            UserSession.id == _session_id(token),
            UserSession.ended_at.is_(None),
            UserSession.created_at >= utcnow() - _max_age(),
        )
    ).scalar_one_or_none()
    if row is not None:
        row.session_token = token
    return row
