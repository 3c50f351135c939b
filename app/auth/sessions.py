"""Sign-ins: each a random token in the session cookie, its hash in `user_session`, ended for
good at sign-out, by a password change, or past LOGIN_MAX_AGE."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from blinker import Namespace
from flask import current_app, has_app_context
from flask_login import LoginManager
from sqlalchemy import event, or_
from sqlalchemy.orm import Session

from ..core.times import utcnow
from ..records.models import User, UserSession, db

login_manager = LoginManager()

# Sent after sign-ins were ended, so this process's live sockets are checked at once
# (other processes find out within LIVE_SESSION_CHECK_INTERVAL).
signals = Namespace()
sessions_ended = signals.signal("sessions-ended")


def _session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(user: User, address: str = "", user_agent: str = "") -> None:
    """A new sign-in for `user`: a random token for the cookie, its hash in user_session,
    with where it was made (the user's account page lists it)."""
    now = utcnow()
    token = secrets.token_urlsafe(32)
    db.session.add(
        UserSession(
            id=_session_id(token),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            address=address[:64] or None,
            user_agent=user_agent[:200] or None,
        )
    )
    # The user's sign-ins that ended or ran out need not be kept.
    db.session.execute(
        db.delete(UserSession).where(
            UserSession.user_id == user.id,
            or_(UserSession.ended_at.is_not(None), UserSession.created_at < now - _max_age()),
        )
    )
    db.session.commit()
    user.session_token = token


def end_sessions(*conditions, commit: bool = True) -> int:
    """End the open sign-ins matching `conditions` (and commit, unless the caller commits
    them with more); returns how many. Once committed, this process's sockets are told."""
    ended = db.session.execute(
        db.update(UserSession)
        .where(UserSession.ended_at.is_(None), *conditions)
        .values(ended_at=utcnow()),
        execution_options={"preserve_rowcount": True},
    ).rowcount
    if ended:
        db.session.info[_ENDED] = True
    if commit:
        db.session.commit()
    return ended


_ENDED = "sessions_ended"


@event.listens_for(Session, "after_commit")
def _tell_sockets(sess: Session) -> None:
    if sess.info.pop(_ENDED, False) and has_app_context():
        sessions_ended.send(current_app._get_current_object())


@event.listens_for(Session, "after_rollback")
def _nothing_ended(sess: Session) -> None:
    sess.info.pop(_ENDED, None)


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
    now = utcnow()
    sid = _session_id(token)
    found = db.session.execute(
        db.select(User, UserSession.last_seen_at)
        .join(UserSession, UserSession.user_id == User.id)
        .where(
            UserSession.id == sid,
            UserSession.ended_at.is_(None),
            UserSession.created_at >= now - _max_age(),
            User.disabled_at.is_(None),
        )
    ).first()
    if found is None:
        return None
    user, last_seen = found
    # When it was last used, to the minute: at most one write a minute per sign-in.
    if last_seen is None or now - last_seen > SEEN_EVERY:
        db.session.execute(
            db.update(UserSession).where(UserSession.id == sid).values(last_seen_at=now)
        )
        db.session.commit()
    user.session_token = token
    return user


SEEN_EVERY = timedelta(minutes=1)


def sessions_of(user: User) -> list[UserSession]:
    """The user's open sign-ins, the most recently used first."""
    return list(
        db.session.execute(
            db.select(UserSession)
            .where(
                UserSession.user_id == user.id,
                UserSession.ended_at.is_(None),
                UserSession.created_at >= utcnow() - _max_age(),
            )
            .order_by(UserSession.last_seen_at.desc(), UserSession.created_at.desc())
        ).scalars()
    )
