"""API tokens for the JSON API (`Authorization: Bearer`): shown once, kept as their hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from ..core.times import utcnow
from ..records.models import ApiToken, db
from . import audit
from .roles import SCOPES, parse_scopes
from .users import AccountError

TOKEN_PREFIX = "vw_"


def _token_hash(token: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough; it is also the lookup key.
    return hashlib.sha256(token.encode()).hexdigest()


def check_token_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise AccountError("token name must be 1 to 64 printable characters")
    return name


def create_token(name: str, scopes=SCOPES) -> tuple[ApiToken, str]:
    """A new token with these scopes (all of them unless given); the secret is returned once."""
    name = check_token_name(name)
    try:
        stored = parse_scopes(scopes)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        token_hash=_token_hash(token),
        prefix=token[:10],
        created_at=utcnow(),
        scopes=stored,
    )
    db.session.add(row)
    db.session.flush()
    audit.record("token_create", f"{row.id} {row.name}", {"scopes": stored})
    return row, token


def _seen_now(last_used_at, last_address, address: str) -> bool:
    """Whether a use is worth a write: at most one a minute per token, or a new address."""
    now = utcnow()
    return (
        last_used_at is None
        or now - last_used_at > timedelta(minutes=1)
        or (address and address != last_address)
    )


def token_for(presented: str, address: str = "") -> ApiToken | None:
    """The live token row for a presented bearer token, noting when and where it was last
    used."""
    if not presented or len(presented) > 200:
        return None
    row = db.session.execute(
        db.select(ApiToken).where(
            ApiToken.token_hash == _token_hash(presented), ApiToken.revoked_at.is_(None)
        )
    ).scalar_one_or_none()
    if row is not None and _seen_now(row.last_used_at, row.last_used_address, address):
        row.last_used_at = utcnow()
        row.last_used_address = address[:64] or row.last_used_address
        db.session.commit()
    return row


def live_token_scopes(presented: str, address: str = "") -> str | None:
    """`token_for` on a connection of its own, given back to the pool before this returns:
    the scopes of the live token (read from the database on every call, so a revoked token
    is refused at once), or None, noting when and where it was last used. For a caller that
    goes on to wait on something else (the send proxy on NXCLOUD) and must not hold a
    database connection."""
    if not presented or len(presented) > 200:
        return None
    with db.engine.connect() as conn:
        row = conn.execute(_LIVE, {"digest": _token_hash(presented)}).first()
        if row is None:
            return None
        if _seen_now(row.last_used_at, row.last_used_address, address):
            conn.execute(
                _USED,
                {"token_id": row.id, "now": utcnow(), "address": address[:64] or None},
            )
            conn.commit()
    return row.scopes


# Built once: the statements of `live_token_scopes` (a send pays for no query building).
_LIVE = db.select(
    ApiToken.id, ApiToken.last_used_at, ApiToken.last_used_address, ApiToken.scopes
).where(ApiToken.token_hash == db.bindparam("digest"), ApiToken.revoked_at.is_(None))
_USED = (
    db.update(ApiToken)
    .where(ApiToken.id == db.bindparam("token_id"))
    .values(last_used_at=db.bindparam("now"), last_used_address=db.bindparam("address"))
)


def list_tokens() -> list[ApiToken]:
    return list(db.session.execute(db.select(ApiToken).order_by(ApiToken.id)).scalars())


# The largest id an Integer column holds: a longer number can only be a name.
_MAX_ID = 2**31 - 1


def revoke_token(ident: str, *, by: str | None = None) -> list[ApiToken]:
    """Revoke live tokens by id or by name; returns those revoked. `by` "id" or "name": only
    that; None: a number is an id when a live token has it, else a name."""
    live = db.select(ApiToken).where(ApiToken.revoked_at.is_(None))
    rows = []
    if by != "name" and ident.isascii() and ident.isdigit() and int(ident) <= _MAX_ID:
        rows = list(db.session.execute(live.where(ApiToken.id == int(ident))).scalars())
    if not rows and by != "id":
        rows = list(db.session.execute(live.where(ApiToken.name == ident)).scalars())
    for row in rows:
        row.revoked_at = utcnow()
        db.session.add(audit.entry("token_revoke", f"{row.id} {row.name}"))
    db.session.commit()
    return rows
