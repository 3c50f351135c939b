"""Operators: their accounts and passwords (Argon2id), checked without telling which names
exist."""

from __future__ import annotations

import secrets
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError

from ..core.services import services
from ..core.times import utcnow
from ..records.models import User, UserSession, db
from . import audit
from .roles import ADMIN, VIEWER, check_role
from .sessions import end_sessions

MAX_USERNAME = 64
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


class AccountError(ValueError):
    pass


def _check_username(username: str) -> str:
    username = (username or "").strip()
    if not username or len(username) > MAX_USERNAME or not username.isprintable():
        raise AccountError(f"username must be 1 to {MAX_USERNAME} printable characters")
    return username


def find_user(username: str) -> User | None:
    return db.session.execute(db.select(User).where(User.username == username)).scalar_one_or_none()


def create_user(username: str, password: str, role: str = VIEWER) -> User:
    username = _check_username(username)
    role = _check_role(role)
    _check_password(password)
    if find_user(username) is not None:
        raise AccountError(f"user {username!r} exists already")
    user = User(
        username=username, password_hash=hasher().hash(password), created_at=utcnow(), role=role
    )
    db.session.add(user)
    db.session.flush()
    audit.record("user_create", username, {"role": role})
    return user


def _check_role(role: str) -> str:
    try:
        return check_role(role)
    except ValueError as exc:
        raise AccountError(str(exc)) from None


def _check_password(password: str) -> None:
    if len(password or "") < MIN_PASSWORD:
        raise AccountError(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"password must be at most {MAX_PASSWORD} characters")


def _existing(username: str) -> User:
    user = find_user(username)
    if user is None:
        raise AccountError(f"no user {username!r}")
    return user


def _active_admin(user: User) -> bool:
    return user.role == ADMIN and user.disabled_at is None


def _hold_admins(user: User) -> bool:
    """Before changing an active admin: lock the active admins' rows (PostgreSQL; SQLite
    takes one writer at a time anyway), in one order, so that two admins stepping down at
    once take turns and the second sees the first's change. Returns whether `user`, read
    again under the lock, is an active admin."""
    if not _active_admin(user):
        return False
    db.session.execute(
        db.select(User.id)
        .where(User.role == ADMIN, User.disabled_at.is_(None))
        .order_by(User.id)
        .with_for_update()
    )
    db.session.refresh(user)
    return _active_admin(user)


def _keeps_an_admin(user: User, was_active_admin: bool) -> None:
    """Refuse a change to an active admin that would leave no active admin (the change is
    made, not committed). A change to anyone else is never refused: without an admin, the
    commands still look after viewers and operators."""
    if not was_active_admin:
        return
    db.session.flush()
    left = db.session.execute(
        db.select(func.count(User.id)).where(User.role == ADMIN, User.disabled_at.is_(None))
    ).scalar_one()
    if not left:
        db.session.rollback()
        raise AccountError(f"{user.username} is the last admin: make another admin first")


def set_password(username: str, password: str) -> None:
    """Set a user's password (an admin's reset, or the command); every sign-in of the user
    ends with the old one."""
    user = _existing(username)
    _check_password(password)
    user.password_hash = hasher().hash(password)
    ended = end_sessions(UserSession.user_id == user.id, commit=False)
    audit.record("password_reset", user.username, {"sign_ins_ended": ended})


def new_password() -> str:
    """A random password, to be shown once."""
    return secrets.token_urlsafe(15)


def reset_password(username: str) -> str:
    """A new random password for a user, returned to be shown once."""
    password = new_password()
    set_password(username, password)
    return password


def change_own_password(user: User, new: str, keep_session: str | None) -> int:
    """The user's own change, once their current password was checked (throttle.authenticate,
    sign_in False). Their other sign-ins end; the one making the change (`keep_session`, a
    session id) stays. Returns how many ended."""
    _check_password(new)
    user.password_hash = hasher().hash(new)
    conditions = [UserSession.user_id == user.id]
    if keep_session:
        conditions.append(UserSession.id != keep_session)
    ended = end_sessions(*conditions, commit=False)
    audit.record("password_change", user.username, {"sign_ins_ended": ended})
    return ended


def set_role(username: str, role: str) -> str:
    """Change a user's role; returns the old one. The last active admin keeps theirs."""
    user = _existing(username)
    role = _check_role(role)
    was_active_admin = _hold_admins(user)
    old = user.role
    if old == role:
        return old
    user.role = role
    _keeps_an_admin(user, was_active_admin)
    audit.record("role_change", user.username, {"from": old, "to": role})
    return old


def disable_user(username: str) -> int:
    """Disable a user: they cannot sign in, and every sign-in of theirs ends at once (an open
    page's live socket closes within LIVE_SESSION_CHECK_INTERVAL). Returns how many ended."""
    user = _existing(username)
    was_active_admin = _hold_admins(user)
    if user.disabled_at is not None:
        return 0
    user.disabled_at = utcnow()
    _keeps_an_admin(user, was_active_admin)
    ended = end_sessions(UserSession.user_id == user.id, commit=False)
    audit.record("user_disable", user.username, {"sign_ins_ended": ended})
    return ended


def enable_user(username: str) -> None:
    user = _existing(username)
    if user.disabled_at is None:
        return
    user.disabled_at = None
    audit.record("user_enable", user.username)


def logout_everywhere(username: str) -> int:
    """End every sign-in of a user; returns how many were open."""
    user = _existing(username)
    ended = end_sessions(UserSession.user_id == user.id, commit=False)
    audit.record("sessions_end", user.username, {"sign_ins_ended": ended})
    return ended


def list_users() -> list[User]:
    return list(db.session.execute(db.select(User).order_by(User.username)).scalars())


def user_names(limit: int = 5) -> list[str]:
    """The first few user names, alphabetically."""
    return list(
        db.session.execute(db.select(User.username).order_by(User.username).limit(limit)).scalars()
    )


def ensure_admin(username: str = "admin") -> str | None:
    """Create a first user with a random password when there is none; return the password.
    Several servers starting at once on one database make one user: the others find the
    name taken (or the user made) and return None."""
    if db.session.execute(db.select(func.count(User.id))).scalar_one():
        return None
    password = new_password()
    try:
        create_user(username, password, ADMIN)
    except (AccountError, IntegrityError):  # made by another process since the count
        db.session.rollback()
        return None
    return password


def hasher() -> PasswordHasher:
    return services(current_app).hasher


@lru_cache(maxsize=8)
def _dummy_hash(h: PasswordHasher) -> str:
    return h.hash(secrets.token_hex(16))


def password_matches(user: User | None, password: str) -> bool:
    # An unknown name costs the same hash check, so timing does not tell which names exist.
    try:
        return (
            hasher().verify(user.password_hash if user else _dummy_hash(hasher()), password)
            and user is not None
        )
    except (VerificationError, InvalidHashError):
        return False
