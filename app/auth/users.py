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
from .sessions import end_sessions

MAX_USERNAME = 64
MIN_PASSWORD = 8


class AccountError(ValueError):
    pass


def _check_username(username: str) -> str:
    username = (username or "").strip()
    if not username or len(username) > MAX_USERNAME or not username.isprintable():
        raise AccountError(f"username must be 1 to {MAX_USERNAME} printable characters")
    return username


def find_user(username: str) -> User | None:
    return db.session.execute(db.select(User).where(User.username == username)).scalar_one_or_none()


def create_user(username: str, password: str) -> User:
    username = _check_username(username)
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password must be at least {MIN_PASSWORD} characters")
    if find_user(username) is not None:
        raise AccountError(f"user {username!r} exists already")
    user = User(username=username, password_hash=hasher().hash(password), created_at=utcnow())
    db.session.add(user)
    db.session.commit()
    return user


def set_password(username: str, password: str) -> None:
    """Change a password; every sign-in of the user ends with the old one."""
    user = find_user(username)
    if user is None:
        raise AccountError(f"no user {username!r}")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password must be at least {MIN_PASSWORD} characters")
    user.password_hash = hasher().hash(password)
    end_sessions(UserSession.user_id == user.id)


def logout_everywhere(username: str) -> int:
    """End every sign-in of a user; returns how many were open."""
    user = find_user(username)
    if user is None:
        raise AccountError(f"no user {username!r}")
    return end_sessions(UserSession.user_id == user.id)


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
    password = secrets.token_urlsafe(15)
    try:
        create_user(username, password)
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
