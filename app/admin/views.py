"""The administrator's pages: users, API tokens and the audit log (roles.ACCESS: admin).

Every change is a POST form (CSRF-checked by the guard) that answers with the page again
and a line that says what was done; a secret (a new password, a new token) is in that
answer only, shown once. A refused change answers 400 with the reason, and changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from sqlalchemy import func

from ..auth import audit, tokens, users
from ..auth.roles import ROLES, SCOPES
from ..core.times import utcnow
from ..dashboard.export import Rows, audited, csv_chunks, iso_cell, text_cell
from ..errors import error_response
from ..records.models import ApiToken, AuditRecord, User, UserSession, db

bp = Blueprint("admin", __name__, url_prefix="/admin")
# Ids in paths stop at their column's range (an INTEGER): a larger one is no page (404), not a
# database error.

AUDIT_PAGE = 50
AUDIT_CELLS = (
    ("id", AuditRecord.id),
    ("at", iso_cell(AuditRecord.at)),
    ("user", text_cell(AuditRecord.username)),
    ("address", text_cell(AuditRecord.address)),
    ("action", text_cell(AuditRecord.action)),
    ("target", text_cell(AuditRecord.target)),
    ("details", text_cell(AuditRecord.details)),
)


def _user(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


def _open_sign_ins() -> dict[int, int]:
    """Open sign-ins per user id: not ended, and not past LOGIN_MAX_AGE."""
    oldest = utcnow() - timedelta(seconds=current_app.config["LOGIN_MAX_AGE"])
    rows = db.session.execute(
        db.select(UserSession.user_id, func.count())
        .where(UserSession.ended_at.is_(None), UserSession.created_at >= oldest)
        .group_by(UserSession.user_id)
    ).all()
    return dict(rows)


def _users_page(done: str | None = None, error: str | None = None, secret=None, status=200):
    return (
        render_template(
            "admin/users.html",
            users=users.list_users(),
            sign_ins=_open_sign_ins(),
            roles=ROLES,
            done=done,
            error=error,
            secret=secret,
            form=request.form if request.method == "POST" else {},
        ),
        status,
    )


def _done(endpoint: str, text: str):
    """After a change that shows no secret: back to the page (a reload does not post again)."""
    return redirect(url_for(endpoint, done=text), code=303)


@bp.get("/users")
def users_page():
    """Users: create, change a role, disable, reset a password, end sign-ins."""
    return _users_page(done=request.args.get("done"))


@bp.post("/users")
def create_user():
    """Create a user with a role; without a password one is made and shown once."""
    name = request.form.get("username", "")
    password = request.form.get("password", "")
    made = not password
    if made:
        password = users.new_password()
    try:
        user = users.create_user(name, password, request.form.get("role", ""))
    except users.AccountError as exc:
        return _users_page(error=str(exc), status=400)
    secret = {"label": f"Password of {user.username}", "value": password} if made else None
    return _users_page(done=f"User {user.username} created ({user.role}).", secret=secret)


@bp.post("/users/<int(max=2147483647):user_id>/role")
def set_role(user_id: int):
    user = _user(user_id)
    try:
        old = users.set_role(user.username, request.form.get("role", ""))
    except users.AccountError as exc:
        return _users_page(error=str(exc), status=400)
    if old == user.role:
        return _done("admin.users_page", f"{user.username} is already {old}.")
    return _done("admin.users_page", f"{user.username}: {old} → {user.role}.")


@bp.post("/users/<int(max=2147483647):user_id>/disable")
def disable_user(user_id: int):
    user = _user(user_id)
    try:
        ended = users.disable_user(user.username)
    except users.AccountError as exc:
        return _users_page(error=str(exc), status=400)
    return _done("admin.users_page", f"{user.username} disabled; {ended} sign-in(s) ended.")


@bp.post("/users/<int(max=2147483647):user_id>/enable")
def enable_user(user_id: int):
    user = _user(user_id)
    users.enable_user(user.username)
    return _done("admin.users_page", f"{user.username} enabled.")


@bp.post("/users/<int(max=2147483647):user_id>/password")
def reset_password(user_id: int):
    """Reset a password: the one the admin typed, or a new one shown once."""
    user = _user(user_id)
    password = request.form.get("password", "")
    made = not password
    try:
        if made:
            password = users.reset_password(user.username)
        else:
            users.set_password(user.username, password)
    except users.AccountError as exc:
        return _users_page(error=str(exc), status=400)
    secret = {"label": f"New password of {user.username}", "value": password} if made else None
    return _users_page(
        done=f"Password of {user.username} reset; their sign-ins ended.", secret=secret
    )


@bp.post("/users/<int(max=2147483647):user_id>/sessions/end")
def end_sessions(user_id: int):
    user = _user(user_id)
    ended = users.logout_everywhere(user.username)
    return _done("admin.users_page", f"{ended} sign-in(s) of {user.username} ended.")


def _tokens_page(done=None, error=None, secret=None, status=200):
    return (
        render_template(
            "admin/tokens.html",
            tokens=tokens.list_tokens(),
            scopes=SCOPES,
            done=done,
            error=error,
            secret=secret,
            form=request.form if request.method == "POST" else {},
        ),
        status,
    )


@bp.get("/tokens")
def tokens_page():
    """API tokens: create one with scopes (its secret shown once), see their use, revoke."""
    return _tokens_page(done=request.args.get("done"))


@bp.post("/tokens")
def create_token():
    try:
        row, secret = tokens.create_token(
            request.form.get("name", ""), request.form.getlist("scope")
        )
    except users.AccountError as exc:
        return _tokens_page(error=str(exc), status=400)
    return _tokens_page(
        done=f"Token {row.name} created ({row.scopes}).",
        secret={"label": f"Token {row.name}", "value": secret},
    )


@bp.post("/tokens/<int(max=2147483647):token_id>/revoke")
def revoke_token(token_id: int):
    row = db.session.get(ApiToken, token_id)
    if row is None:
        abort(404)
    revoked = tokens.revoke_token(str(token_id), by="id")
    text = f"Token {row.name} revoked." if revoked else f"Token {row.name} was revoked already."
    return _done("admin.tokens_page", text)


class AuditFilterError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def _day(name: str) -> datetime | None:
    """A date field (YYYY-MM-DD, UTC) as the start of that day."""
    value = request.args.get(name, "").strip()
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise AuditFilterError(name, "must be a date, YYYY-MM-DD") from None
    return datetime.combine(day, time(), tzinfo=UTC)


def _audit_filters() -> dict:
    action = request.args.get("action", "").strip() or None
    if action is not None and action not in audit.ACTIONS:
        raise AuditFilterError("action", f"unknown action {action[:40]!r}")
    before = request.args.get("before", "").strip()
    if before and not (before.isdigit() and len(before) < 19):
        raise AuditFilterError("before", "must be a record number")
    since = _day("since")
    until = _day("until")
    if until is not None:
        try:
            until += timedelta(days=1)  # the whole of that day
        except OverflowError:
            until = None  # 9999-12-31: nothing is later

    return {
        "username": request.args.get("user", "").strip()[:80] or None,
        "action": action,
        "since": since,
        "until": until,
        "before": int(before) if before else None,
    }


def _shown_args() -> dict:
    return {k: request.args[k] for k in ("user", "action", "since", "until") if request.args.get(k)}


@bp.get("/audit")
def audit_page():
    """The audit log, newest first, filtered by user, action and day, 50 records a page."""
    try:
        filters = _audit_filters()
    except AuditFilterError as exc:
        return render_template(
            "admin/audit.html",
            rows=[],
            error=exc,
            args=_shown_args(),
            actions=audit.ACTIONS,
            names=[],
            older=None,
            details_of=audit.details_of,
        ), 400
    rows = audit.recent(AUDIT_PAGE + 1, **filters)
    older = rows[AUDIT_PAGE - 1].id if len(rows) > AUDIT_PAGE else None
    names = db.session.execute(
        db.select(AuditRecord.username).distinct().order_by(AuditRecord.username).limit(500)
    ).scalars()
    return render_template(
        "admin/audit.html",
        rows=rows[:AUDIT_PAGE],
        older=older,
        args=_shown_args(),
        actions=audit.ACTIONS,
        names=list(names),
        error=None,
        details_of=audit.details_of,
        now=utcnow(),
    )


@bp.get("/audit.csv")
def audit_csv():
    """The filtered audit log as CSV (the export itself is recorded)."""
    try:
        filters = _audit_filters()
    except AuditFilterError as exc:
        return error_response(400, exc.field, exc.reason)
    stmt = audit.query(**filters).with_only_columns(*(cell for _, cell in AUDIT_CELLS))
    count = Rows()
    chunks = csv_chunks(tuple(name for name, _ in AUDIT_CELLS), stmt, count)
    name = f"viberwatch-audit-{utcnow().date().isoformat()}.csv"
    return Response(
        stream_with_context(audited(chunks, count, "audit", {"filter": _shown_args()})),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
