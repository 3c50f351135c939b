"""Sign-in attempts: counted before their password is checked, limited per address and per
account across every process and host, and checked a bounded number at once."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import func

from ..core.services import services
from ..core.times import utcnow
from ..records.models import LoginFailure, User, db
from .users import MAX_USERNAME, find_user, hasher, password_matches


@dataclass
class LoginOutcome:
    user: User | None = None
    http_status: int = 200
    error: str | None = None
    retry_after: int | None = None


class PasswordChecks:
    """Bounds the Argon2 checks running at once in this process (each takes ARGON2_MEMORY_COST
    of memory), and remembers the most that ever ran together."""

    def __init__(self, limit: int):
        self.slots = threading.BoundedSemaphore(limit)
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    @contextmanager
    def slot(self, wait: float):
        """Yields True with a slot held, or False when none came free within `wait` seconds."""
        if not self.slots.acquire(timeout=wait):
            yield False
            return
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            yield True
        finally:
            with self.lock:
                self.running -= 1
            self.slots.release()


# Any constant: the advisory lock that makes PostgreSQL take sign-in attempts one at a time.
ATTEMPTS_LOCK = 0x7669626572


def _count(*conditions) -> int:
    return db.session.execute(
        db.select(func.count(LoginFailure.id)).where(*conditions)
    ).scalar_one()


def _reserve(key: str, address: str, now, since) -> LoginFailure | None:
    """Count an attempt as a failure before its password is checked, or refuse it (None).

    Reserved one at a time across processes and hosts, so simultaneous attempts cannot all
    read the count before any of them is added. The limits slow a guesser without locking
    the owner out: an address may fail LOGIN_MAX_FAILURES_PER_ADDRESS times over all
    accounts; once an account has failed LOGIN_MAX_FAILURES_PER_ACCOUNT times (from anywhere),
    only addresses that have not failed on it may still try it.
    """
    cfg = current_app.config
    if db.engine.dialect.name == "postgresql":
        db.session.execute(db.select(func.pg_advisory_xact_lock(ATTEMPTS_LOCK)))
    # On SQLite this first write takes the database's write lock until the commit.
    db.session.execute(db.delete(LoginFailure).where(LoginFailure.at <= since))
    by_address = _count(LoginFailure.address == address)
    by_account = _count(LoginFailure.username == key)
    by_both = _count(LoginFailure.username == key, LoginFailure.address == address)
    if by_address >= cfg["LOGIN_MAX_FAILURES_PER_ADDRESS"] or (
        by_account >= cfg["LOGIN_MAX_FAILURES_PER_ACCOUNT"] and by_both
    ):
        db.session.commit()
        return None
    attempt = LoginFailure(username=key, address=address, at=now)
    db.session.add(attempt)
    db.session.commit()
    return attempt


def authenticate(
    username: str, password: str, address: str, *, sign_in: bool = True
) -> LoginOutcome:
    """Check a sign-in: the attempt is counted first (see _reserve), then its password is
    checked among a bounded number at once; a right password takes the attempt back.
    `sign_in` False: a signed-in user's current password, asked again before a change (the
    same limits, so a stolen cookie cannot try passwords faster; not a new sign-in)."""
    cfg = current_app.config
    window = cfg["LOGIN_FAILURE_WINDOW"]
    key = (username or "").strip().lower()[:MAX_USERNAME]
    address = (address or "unknown")[:64]
    now = utcnow()
    since = now - timedelta(seconds=window)
    attempt = _reserve(key, address, now, since)
    if attempt is None:
        return LoginOutcome(
            http_status=429, retry_after=window, error="Too many failed sign-ins. Try again later."
        )
    user = find_user((username or "").strip()) if username else None
    checks = services(current_app).password_checks
    with checks.slot(cfg["LOGIN_CHECK_WAIT"]) as held:
        if not held:
            db.session.delete(attempt)  # no password was checked: it does not count
            db.session.commit()
            return LoginOutcome(
                http_status=503,
                retry_after=1,
                error="Too many sign-ins at once. Try again in a moment.",
            )
        matches = password_matches(user, password or "")
        if matches and hasher().check_needs_rehash(user.password_hash):
            user.password_hash = hasher().hash(password)
    if not matches:
        return LoginOutcome(http_status=401, error="Unknown username or wrong password.")
    if user.disabled_at is not None:
        # Said only to whoever knows the password; the attempt stays counted.
        db.session.commit()
        return LoginOutcome(
            http_status=403, error="This account is disabled. Ask an administrator."
        )
    if sign_in:
        user.last_login_at = now
        user.last_login_address = address
    # This address's failures on the account are forgiven; other addresses' stay counted.
    db.session.execute(
        db.delete(LoginFailure).where(LoginFailure.username == key, LoginFailure.address == address)
    )
    db.session.commit()
    return LoginOutcome(user=user)
