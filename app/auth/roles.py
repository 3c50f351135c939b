"""Who may call what: the role each page and action needs, and the scope an API token needs.

Roles include the ones before them: a `viewer` sees every page and the live feed; an
`operator` also exports CSV, sends from a conversation and reprocesses rejected bodies; an
`admin` also manages users, API tokens, and reads the audit log. A token carries scopes
instead: `register` (tell viberwatch about sends), `read` (read messages, export), `send`
(send through the proxy).

Every endpoint has a rule here or is public (PUBLIC_ENDPOINTS, the machine blueprints: they
authenticate on their own). An endpoint with neither is refused to everyone (the guard
answers 403) and fails the test that walks every route, so a new route cannot go out open.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import render_template, request

from ..errors import error_response, wants_json

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
RANK = {role: n for n, role in enumerate(ROLES)}
REGISTER, READ, SEND = "register", "read", "send"
SCOPES = (REGISTER, READ, SEND)


@dataclass(frozen=True)
class Rule:
    role: str  # the least role a signed-in user needs
    scope: str | None = None  # the scope an API token needs; None: no token is taken


ACCESS: dict[str, Rule] = {
    # Pages and their fragments: everyone signed in.
    "dashboard.messages": Rule(VIEWER),
    "dashboard.message": Rule(VIEWER),
    "dashboard.rejected": Rule(VIEWER),
    "conversations.index": Rule(VIEWER),
    "conversations.thread": Rule(VIEWER),
    "analytics.index": Rule(VIEWER),
    "analytics.data": Rule(VIEWER),
    "analytics.top_phones": Rule(VIEWER),
    "campaigns.index": Rule(VIEWER),
    "campaigns.show": Rule(VIEWER),
    "campaigns.compare": Rule(VIEWER),
    "search.index": Rule(VIEWER),
    "alerts.index": Rule(VIEWER),
    "live.socket": Rule(VIEWER),
    "auth.logout": Rule(VIEWER),
    "account.index": Rule(VIEWER),
    "account.password": Rule(VIEWER),
    "account.end_session": Rule(VIEWER),
    # The JSON API: a person by role, a machine by scope.
    "api.read_message": Rule(VIEWER, READ),
    "api.register_message": Rule(OPERATOR, REGISTER),
    # What changes the world or hands out the record.
    "export.export_csv": Rule(OPERATOR, READ),
    "dashboard.reprocess": Rule(OPERATOR),
    "sending.reply_page": Rule(OPERATOR),
    "sending.send": Rule(OPERATOR),
    "sending.session_window": Rule(OPERATOR),
    # Administration.
    "admin.users_page": Rule(ADMIN),
    "admin.create_user": Rule(ADMIN),
    "admin.set_role": Rule(ADMIN),
    "admin.disable_user": Rule(ADMIN),
    "admin.enable_user": Rule(ADMIN),
    "admin.reset_password": Rule(ADMIN),
    "admin.end_sessions": Rule(ADMIN),
    "admin.tokens_page": Rule(ADMIN),
    "admin.create_token": Rule(ADMIN),
    "admin.revoke_token": Rule(ADMIN),
    "admin.audit_page": Rule(ADMIN),
    "admin.audit_csv": Rule(ADMIN),
}


def rule_for(endpoint: str | None) -> Rule | None:
    return ACCESS.get(endpoint or "")


def has_role(user, role: str) -> bool:
    """Whether a signed-in user's role includes `role` (an unknown role includes nothing)."""
    return RANK.get(getattr(user, "role", None), -1) >= RANK[role]


def allowed(user, endpoint: str) -> bool:
    """Whether `user` may call `endpoint`: what templates ask before showing a control."""
    rule = rule_for(endpoint)
    return rule is not None and has_role(user, rule.role)


def has_scope(token, scope: str) -> bool:
    return scope in (getattr(token, "scopes", "") or "").split()


def parse_scopes(values) -> str:
    """Scopes as stored (space-separated, in SCOPES order) from a list or a text of names;
    an unknown name is an error that names it."""
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    names = {v.strip() for v in values if v and v.strip()}
    unknown = sorted(names - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}: use {', '.join(SCOPES)}")
    if not names:
        raise ValueError(f"give at least one scope: {', '.join(SCOPES)}")
    return " ".join(s for s in SCOPES if s in names)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return role


def forbidden(needs: str | None, *, scope: bool = False):
    """The 403 of a refused action: JSON or a page, naming the role (or scope) it needs;
    `needs` None: the endpoint has no rule, so nobody may use it."""
    what = "scope" if scope else "role"
    reason = f"this needs the {needs} {what}" if needs else "this has no access rule yet"
    if scope or wants_json() or request.headers.get("HX-Request"):
        return error_response(403, what, reason)
    return render_template("auth/forbidden.html", needs=needs), 403
