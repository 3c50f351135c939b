"""The sign-in and sign-out pages."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf.csrf import generate_csrf

from . import audit
from .security import request_client_address
from .sessions import end_session, start_session
from .throttle import authenticate
from .users import MAX_USERNAME

bp = Blueprint("auth", __name__)


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
        if outcome.http_status in (401, 403):  # a password was checked and refused
            audit.record(
                "sign_in_failed",
                username.strip()[:MAX_USERNAME],
                {"reason": outcome.error},
                username=username.strip()[:MAX_USERNAME] or "(no name)",
            )
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
    start_session(outcome.user, request_client_address(), request.headers.get("User-Agent", ""))
    login_user(outcome.user)
    audit.record("sign_in", outcome.user.username)
    session.permanent = True
    session["login_at"] = int(time.time())
    generate_csrf()
    return redirect(next_url)


@bp.post("/logout")
def logout():
    """Sign out: this sign-in ends for good, wherever its cookie was copied."""
    audit.record("sign_out", current_user.username)
    end_session(getattr(current_user, "session_token", None))
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))
