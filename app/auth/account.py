"""My account: change your own password, see your open sign-ins and end any of them."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_login import current_user, logout_user

from ..records.models import UserSession
from . import audit, users
from .security import request_client_address
from .sessions import end_sessions, session_id_of, sessions_of
from .throttle import authenticate

bp = Blueprint("account", __name__, url_prefix="/account")


def _page(done=None, error=None, status=200):
    return (
        render_template(
            "account/index.html",
            sign_ins=sessions_of(current_user),
            this_one=session_id_of(current_user),
            done=done,
            error=error,
        ),
        status,
    )


@bp.get("")
def index():
    """Your password and your open sign-ins."""
    return _page(done=request.args.get("done"))


@bp.post("/password")
def password():
    """Change your password: the current one first; your other sign-ins end, this one stays."""
    new = request.form.get("new_password", "")
    if new != request.form.get("confirm_password", ""):
        return _page(error="The new password and its confirmation differ.", status=400)
    checked = authenticate(
        current_user.username,
        request.form.get("current_password", ""),
        request_client_address(),
        sign_in=False,
    )
    if checked.user is None:
        wrong = checked.http_status == 401
        if wrong:  # a password was checked and refused: a stolen cookie guessing shows here
            audit.record(
                "password_change_failed", current_user.username, {"reason": "wrong password"}
            )
        page, status = _page(
            error="Password not changed: "
            + ("the current password is wrong." if wrong else checked.error),
            status=400 if wrong else checked.http_status,
        )
        retry = {"Retry-After": str(checked.retry_after)} if checked.retry_after else {}
        return page, status, retry
    try:
        ended = users.change_own_password(current_user, new, session_id_of(current_user))
    except users.AccountError as exc:
        return _page(error=f"Password not changed: {exc}.", status=400)
    return redirect(
        url_for("account.index", done=f"Password changed; {ended} other sign-in(s) ended."),
        code=303,
    )


@bp.post("/sessions/<sid>/end")
def end_session(sid: str):
    """End one of your sign-ins; ending this one signs you out."""
    mine = UserSession.user_id == current_user.id
    if len(sid) > 64 or not end_sessions(UserSession.id == sid, mine, commit=False):
        return _page(error="No such open sign-in of yours.", status=404)
    audit.record("sessions_end", current_user.username, {"sign_ins_ended": 1, "own": True})
    if sid == session_id_of(current_user):
        logout_user()
        session.clear()
        return redirect(url_for("auth.login"), code=303)
    return redirect(url_for("account.index", done="Sign-in ended."), code=303)
