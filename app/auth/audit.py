"""The audit log: one append-only record per action of a person, or of a command run on the
server (as `cli`, with the OS user). Webhooks and machine calls to the API write none.

Who did it comes from where the action runs: the signed-in user of the request (or the API
token that made the call), else the command line. The user's name is copied into the
record, so it outlives the user."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterable
from datetime import datetime, timedelta

from flask import current_app, g, has_request_context
from flask_login import current_user

from ..core.times import utcnow
from ..records.models import AuditRecord, db
from .security import request_client_address

# Every action recorded, with what the page shows for it.
ACTIONS = {
    "sign_in": "signed in",
    "sign_in_failed": "failed to sign in",
    "sign_out": "signed out",
    "password_change": "changed own password",
    "password_change_failed": "failed to change own password",
    "password_reset": "reset a password",
    "user_create": "created a user",
    "role_change": "changed a role",
    "user_disable": "disabled a user",
    "user_enable": "enabled a user",
    "sessions_end": "ended sign-ins",
    "token_create": "created an API token",
    "token_revoke": "revoked an API token",
    "export": "exported CSV",
    "reprocess": "reprocessed a body",
    "send": "sent a message",
    "alert_rules_change": "changed the alert rules",
}
CLI = "cli"
MAX_TARGET = 200


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def actor() -> tuple[int | None, str, str | None, dict]:
    """(user id, name, address, extra details) of whoever is acting now."""
    if has_request_context():
        address = request_client_address() or None
        if current_user and current_user.is_authenticated:
            return current_user.id, current_user.username, address, {}
        token = g.get("api_token")
        if token is not None:
            return None, f"token {token.name}", address, {"token_id": token.id}
        return None, "(not signed in)", address, {}
    return None, CLI, None, {"os_user": _os_user()}


def entry(
    action: str,
    target: str | None = None,
    details: dict | None = None,
    *,
    user_id: int | None = None,
    username: str | None = None,
) -> AuditRecord:
    """The record of `action` by whoever is acting now (or by the user given)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    uid, name, address, extra = actor()
    if username is not None:
        uid, name = user_id, username
    merged = {**extra, **(details or {})}
    return AuditRecord(
        at=utcnow(),
        user_id=uid,
        username=name[:80],
        address=address,
        action=action,
        target=(str(target)[:MAX_TARGET] if target is not None else None),
        details=json.dumps(merged, sort_keys=True, default=str) if merged else None,
    )


def record(action: str, target: str | None = None, details: dict | None = None, **who) -> None:
    """Add the record to the session's transaction and commit it, with whatever the action
    changed in the same transaction."""
    db.session.add(entry(action, target, details, **who))
    db.session.commit()


def record_apart(action: str, target: str | None = None, details: dict | None = None) -> None:
    """Write the record in a transaction of its own (for an action that ends while the
    session's connection is busy, such as a streamed export)."""
    row = entry(action, target, details)
    values = {c.name: getattr(row, c.name) for c in AuditRecord.__table__.columns if c.name != "id"}
    with db.engine.begin() as conn:
        conn.execute(db.insert(AuditRecord).values(**values))


def details_of(row: AuditRecord) -> dict:
    try:
        value = json.loads(row.details) if row.details else {}
    except ValueError:
        return {"text": row.details}
    return value if isinstance(value, dict) else {"value": value}


def query(
    *,
    username: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: int | None = None,
):
    """Records newest first, filtered; `before` is the keyset cursor (a record id)."""
    stmt = db.select(AuditRecord)
    if username:
        stmt = stmt.where(AuditRecord.username == username)
    if action:
        stmt = stmt.where(AuditRecord.action == action)
    if since is not None:
        stmt = stmt.where(AuditRecord.at >= since)
    if until is not None:
        stmt = stmt.where(AuditRecord.at < until)
    if before is not None:
        stmt = stmt.where(AuditRecord.id < before)
    return stmt.order_by(AuditRecord.id.desc())


def recent(limit: int = 50, **filters) -> list[AuditRecord]:
    return list(db.session.execute(query(**filters).limit(limit)).scalars())


def purge_older(now: datetime | None = None) -> int:
    """Delete records older than AUDIT_RETENTION_DAYS (0 keeps them all); returns how many."""
    days = current_app.config["AUDIT_RETENTION_DAYS"]
    if not days:
        return 0
    cutoff = (now or utcnow()) - timedelta(days=days)
    deleted = db.session.execute(
        db.delete(AuditRecord).where(AuditRecord.at < cutoff),
        execution_options={"synchronize_session": False},
    ).rowcount
    db.session.commit()
    return deleted


def describe(rows: Iterable[AuditRecord]) -> list[str]:
    """One line per record, for `viberwatch audit`."""
    out = []
    for row in rows:
        where = f" from {row.address}" if row.address else ""
        target = f" {row.target}" if row.target else ""
        extra = f" {row.details}" if row.details else ""
        out.append(
            f"{row.at:%Y-%m-%d %H:%M:%S}  {row.username}{where}  {row.action}{target}{extra}"
        )
    return out
