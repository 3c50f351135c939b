"""Operators' sign-in, API tokens, and the login requirement on everything else.

Every endpoint needs a signed-in user, except the login page, static files and the icon, the
webhooks (their own authentication, app/webhooks/auth.py), health and metrics (their own token),
the OpenAPI document, and views marked with `public`. The JSON API also takes
`Authorization: Bearer <token>`; such calls need no CSRF token, as no browser sends them.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from blinker import Namespace
from flask import (
    Blueprint,
    Flask,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf.csrf import generate_csrf
from sqlalchemy import func, or_

from ..htmx import is_htmx
from ..records.models import ApiToken, LoginFailure, User, UserSession, db, utcnow
from .security import MACHINE_BLUEPRINTS, csrf, request_client_address

bp = Blueprint("auth", __name__)
login_manager = LoginManager()

PUBLIC_ENDPOINTS = {"auth.login", "static", "favicon", "openapi.document"}
PUBLIC_BLUEPRINTS = MACHINE_BLUEPRINTS
CSRF_EXEMPT_BLUEPRINTS = {"webhooks", "bench"}
BEARER_BLUEPRINTS = {"api"}
TOKEN_PREFIX = "vw_"
MAX_USERNAME = 64
MIN_PASSWORD = 8


def public(view):
    """Mark a view as reachable without a login (it must authenticate on its own)."""
    view.public = True
    return view


# --- users -------------------------------------------------------------------------------


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


# --- sessions ----------------------------------------------------------------------------

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
    return timedelta(seconds=int(current_app.config["LOGIN_MAX_AGE"]))


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


def user_names(limit: int = 5) -> list[str]:
    """The first few user names, alphabetically."""
    return list(
        db.session.execute(db.select(User.username).order_by(User.username).limit(limit)).scalars()
    )


def ensure_admin(username: str = "admin") -> str | None:
    """Create a first user with a random password when there is none; return the password."""
    if db.session.execute(db.select(func.count(User.id))).scalar_one():
        return None
    password = secrets.token_urlsafe(15)
    create_user(username, password)
    return password


def hasher() -> PasswordHasher:
    return current_app.extensions["viberwatch.hasher"]


@lru_cache(maxsize=8)
def _dummy_hash(h: PasswordHasher) -> str:
    return h.hash(secrets.token_hex(16))


def _password_matches(user: User | None, password: str) -> bool:
    # An unknown name costs the same hash check, so timing does not tell which names exist.
    try:
        return (
            hasher().verify(user.password_hash if user else _dummy_hash(hasher()), password)
            and user is not None
        )
    except (VerificationError, InvalidHashError):
        return False


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
    if by_address >= int(cfg["LOGIN_MAX_FAILURES_PER_ADDRESS"]) or (
        by_account >= int(cfg["LOGIN_MAX_FAILURES_PER_ACCOUNT"]) and by_both
    ):
        db.session.commit()
        return None
    attempt = LoginFailure(username=key, address=address, at=now)
    db.session.add(attempt)
    db.session.commit()
    return attempt


def authenticate(username: str, password: str, address: str) -> LoginOutcome:
    """Check a sign-in: the attempt is counted first (see _reserve), then its password is
    checked among a bounded number at once; a right password takes the attempt back."""
    cfg = current_app.config
    window = int(cfg["LOGIN_FAILURE_WINDOW"])
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
    checks: PasswordChecks = current_app.extensions["viberwatch.password_checks"]
    with checks.slot(float(cfg["LOGIN_CHECK_WAIT"])) as held:
        if not held:
            db.session.delete(attempt)  # no password was checked: it does not count
            db.session.commit()
            return LoginOutcome(
                http_status=503,
                retry_after=1,
                error="Too many sign-ins at once. Try again in a moment.",
            )
        matches = _password_matches(user, password or "")
        if matches and hasher().check_needs_rehash(user.password_hash):
            user.password_hash = hasher().hash(password)
    if not matches:
        return LoginOutcome(http_status=401, error="Unknown username or wrong password.")
    user.last_login_at = now
    # This address's failures on the account are forgiven; other addresses' stay counted.
    db.session.execute(
        db.delete(LoginFailure).where(LoginFailure.username == key, LoginFailure.address == address)
    )
    db.session.commit()
    return LoginOutcome(user=user)


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


# --- API tokens --------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough; it is also the lookup key.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(name: str) -> tuple[ApiToken, str]:
    name = (name or "").strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise AccountError("token name must be 1 to 64 printable characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=_token_hash(token), prefix=token[:10], created_at=utcnow())
    db.session.add(row)
    db.session.commit()
    return row, token


def token_for(presented: str) -> ApiToken | None:
    """The live token row for a presented bearer token, noting when it was last used."""
    if not presented or len(presented) > 200:
        return None
    row = db.session.execute(
        db.select(ApiToken).where(
            ApiToken.token_hash == _token_hash(presented), ApiToken.revoked_at.is_(None)
        )
    ).scalar_one_or_none()
    if row is not None:
        now = utcnow()
        # At most one write a minute per token, not one per call.
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            row.last_used_at = now
            db.session.commit()
    return row


def list_tokens() -> list[ApiToken]:
    return list(db.session.execute(db.select(ApiToken).order_by(ApiToken.id)).scalars())


def revoke_token(ident: str) -> list[ApiToken]:
    """Revoke live tokens by id or by name; returns those revoked."""
    query = db.select(ApiToken).where(ApiToken.revoked_at.is_(None))
    query = (
        query.where(ApiToken.id == int(ident))
        if ident.isdigit()
        else query.where(ApiToken.name == ident)
    )
    rows = list(db.session.execute(query).scalars())
    for row in rows:
        row.revoked_at = utcnow()
    db.session.commit()
    return rows


# --- views -------------------------------------------------------------------------------


def home_url() -> str:
    return (
        url_for("dashboard.messages") if "dashboard.messages" in current_app.view_functions else "/"
    )


def safe_next(target: str | None) -> str:
    """`next` only when it is a path on this site; anything else goes home."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return home_url()
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return home_url()
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return home_url()
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in with a username and password."""
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(next_url)
        return render_template("auth/login.html", next=next_url, username="", error=None)
    username = request.form.get("username", "")
    outcome = authenticate(username, request.form.get("password", ""), request_client_address())
    if outcome.user is None:
        headers = {"Retry-After": str(outcome.retry_after)} if outcome.retry_after else {}
        return (
            render_template(
                "auth/login.html",
                next=next_url,
                username=username[:MAX_USERNAME],
                error=outcome.error,
            ),
            outcome.http_status,
            headers,
        )
    # A fresh session on sign-in, so nothing set before it (a planted CSRF token) carries over.
    session.clear()
    start_session(outcome.user)
    login_user(outcome.user)
    session.permanent = True
    session["login_at"] = int(time.time())
    generate_csrf()
    return redirect(next_url)


@bp.post("/logout")
def logout():
    """Sign out: this sign-in ends for good, wherever its cookie was copied."""
    end_session(getattr(current_user, "session_token", None))
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


def _wants_json() -> bool:
    return (
        request.blueprint in BEARER_BLUEPRINTS
        or request.is_json
        or request.headers.get("Upgrade", "").lower() == "websocket"
        or request.accept_mimetypes.best == "application/json"
    )


def _unauthenticated(reason: str):
    if request.blueprint in BEARER_BLUEPRINTS:
        return (
            jsonify(
                {"error": f"Authorization: {reason}", "field": "Authorization", "reason": reason}
            ),
            401,
            {"WWW-Authenticate": 'Bearer realm="viberwatch"'},
        )
    if _wants_json():
        return jsonify({"error": f"login: {reason}", "field": "login", "reason": reason}), 401
    login_url = url_for("auth.login", next=request.full_path.rstrip("?"))
    if is_htmx():
        # htmx would swap a login page into a fragment; send the whole window there instead.
        return "", 401, {"HX-Redirect": login_url}
    return redirect(login_url)


def _is_public() -> bool:
    if request.endpoint in PUBLIC_ENDPOINTS or request.blueprint in PUBLIC_BLUEPRINTS:
        return True
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "public", False))


def _login_expired() -> bool:
    login_at = session.get("login_at")
    return not isinstance(login_at, int) or time.time() - login_at > int(
        current_app.config["LOGIN_MAX_AGE"]
    )


def require_login():
    """before_request: let through public endpoints, bearer API calls and signed-in users."""
    if request.routing_exception is not None:
        return None  # 404 or 405 whoever asks: it shows nothing a 401 would not
    if _is_public():
        if request.blueprint not in CSRF_EXEMPT_BLUEPRINTS:
            csrf.protect()
        return None
    authorization = request.headers.get("Authorization", "")
    if request.blueprint in BEARER_BLUEPRINTS and authorization:
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return _unauthenticated("use Bearer <token>")
        token = token_for(presented.strip())
        if token is None:
            return _unauthenticated("unknown or revoked token")
        g.api_token = token
        return None
    if not current_user.is_authenticated:
        return _unauthenticated("sign in required")
    if _login_expired():
        end_session(current_user.session_token)
        logout_user()
        session.clear()
        return _unauthenticated("the sign-in has expired")
    csrf.protect()
    return None


def init_app(app: Flask) -> None:
    app.extensions["viberwatch.password_checks"] = PasswordChecks(
        int(app.config["LOGIN_CONCURRENT_CHECKS"])
    )
    app.extensions["viberwatch.hasher"] = PasswordHasher(
        time_cost=int(app.config["ARGON2_TIME_COST"]),
        memory_cost=int(app.config["ARGON2_MEMORY_COST"]),
        parallelism=int(app.config["ARGON2_PARALLELISM"]),
    )
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    app.register_blueprint(bp)
    app.before_request(require_login)
