"""Authentication of the webhook calls, and the bounded keeping of refused bodies.

Three checks, each on when configured, in any combination: the source network
(WEBHOOK_ALLOW_NETWORKS, on the client address of app/auth/security.py's one rule), a secret
token in the URL or the X-Webhook-Token header (WEBHOOK_TOKEN), and NXCLOUD's request
signature (WEBHOOK_SIGN_ACCESS_KEY and WEBHOOK_SIGN_SECRET): signed for the webhook it was
sent to (its action and bizType), `ts` within WEBHOOK_SIGN_WINDOW seconds, and used once.
A refused body is kept with what it presented (the token only as an HMAC), so reprocessing
it runs the same checks again, never around them. No `request` here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import func
from werkzeug.datastructures import Headers

from ..core import signing
from ..core.errors import error_body
from ..core.services import services
from ..core.times import utcnow
from ..ingest import Result, refuse
from ..records import replay
from ..records.models import RawBody, RefusedTally, db
from ..records.sqlutil import insert_ignore

SIGN_HEADERS = ("accessKey", "ts", "bizType", "action", "sign")
TOKEN_HEADER = "X-Webhook-Token"
# Kept in a refused body's headers: the HMAC (keyed with SECRET_KEY) of the token it presented.
TOKEN_DIGEST = "token-digest"


@dataclass(frozen=True)
class Settings:
    token: str | None = None
    token_key: bytes = b""
    sign_access_key: str | None = None
    sign_secret: str | None = None
    sign_window: int = 300
    sign_biz_type: str = signing.VIBER_BIZ_TYPE
    sign_actions: Mapping[str, str] = field(default_factory=lambda: dict(signing.CALLBACK_ACTIONS))
    networks: list = field(default_factory=list)
    keep_refused_per_minute: int = 60

    @property
    def unauthenticated(self) -> bool:
        """True while anyone who can reach the URL can post a body that is applied."""
        return not (self.token or self.sign_secret or self.networks)

    def token_digest(self, token: str | None) -> str | None:
        """What is compared and kept instead of a token: its HMAC under the secret key."""
        if not token:
            return None
        return hmac.new(self.token_key, token.encode(), hashlib.sha256).hexdigest()


def _actions(value) -> dict:
    value = value or {}
    actions = {**signing.CALLBACK_ACTIONS, **value} if isinstance(value, Mapping) else {}
    if set(actions) != set(signing.CALLBACK_ACTIONS) or not all(
        isinstance(a, str) and a for a in actions.values()
    ):
        raise ValueError(
            "WEBHOOK_SIGN_ACTIONS maps dr and message to the action each is signed with"
        )
    return actions


def settings_from(config: Mapping) -> Settings:
    """Settings from the app config; a half-configured signature is a startup error."""
    access_key = config.get("WEBHOOK_SIGN_ACCESS_KEY") or None
    secret = config.get("WEBHOOK_SIGN_SECRET") or None
    if bool(access_key) != bool(secret):
        raise ValueError("WEBHOOK_SIGN_ACCESS_KEY and WEBHOOK_SIGN_SECRET go together")
    window = config.get("WEBHOOK_SIGN_WINDOW") or 300
    if window <= 0:
        raise ValueError("WEBHOOK_SIGN_WINDOW must be a positive number of seconds")
    return Settings(
        token=config.get("WEBHOOK_TOKEN") or None,
        token_key=(config.get("SECRET_KEY") or "").encode(),
        sign_access_key=access_key,
        sign_secret=secret,
        sign_window=window,
        sign_biz_type=config.get("WEBHOOK_SIGN_BIZ_TYPE") or signing.VIBER_BIZ_TYPE,
        sign_actions=_actions(config.get("WEBHOOK_SIGN_ACTIONS")),
        networks=config.get("WEBHOOK_ALLOW_NETWORKS") or [],
        keep_refused_per_minute=config.get("WEBHOOK_REFUSED_KEEP_PER_MINUTE", 60),
    )


def current() -> Settings:
    return services(current_app).webhook_settings


@dataclass(frozen=True)
class Refusal:
    http_status: int
    field: str
    reason: str

    def as_json(self) -> dict:
        return error_body(self.field, self.reason)


def presented_token(args: Mapping, headers: Mapping) -> str | None:
    """The token a call presents: the X-Webhook-Token header, else the URL's ?token=."""
    return headers.get(TOKEN_HEADER) or args.get("token")


def check_source(
    settings: Settings, client_address: str, token_digest: str | None
) -> Refusal | None:
    """The checks that need no body: source network, then the token (by its digest)."""
    if settings.networks:
        try:
            ip = ipaddress.ip_address(client_address)
        except ValueError:
            ip = None
        if ip is None or not any(ip in net for net in settings.networks):
            return Refusal(403, "source", f"address {client_address or 'unknown'} is not allowed")
    if settings.token:
        if not token_digest:
            return Refusal(
                401, "token", f"missing; the webhook URL carries ?token= (or send {TOKEN_HEADER})"
            )
        if not hmac.compare_digest(
            token_digest.encode(), settings.token_digest(settings.token).encode()
        ):
            return Refusal(401, "token", "does not match")
    return None


def check_signature(
    settings: Settings, endpoint: str, headers: Mapping, body: bytes, now: datetime | None = None
) -> Refusal | None:
    """NXCLOUD's signature over the exact body, made for this webhook, `ts` within the window."""
    if not settings.sign_secret:
        return None
    missing = [h for h in SIGN_HEADERS if not headers.get(h)]
    if missing:
        return Refusal(401, "sign", f"missing signature headers: {', '.join(missing)}")
    access_key = headers.get("accessKey")
    if not hmac.compare_digest(access_key.encode(), settings.sign_access_key.encode()):
        return Refusal(401, "accessKey", "unknown accessKey")
    ts, action, biz_type = headers.get("ts"), headers.get("action"), headers.get("bizType")
    expected = signing.sign(access_key, action, biz_type, ts, body, settings.sign_secret)
    if not hmac.compare_digest(headers.get("sign").strip().lower().encode(), expected.encode()):
        return Refusal(401, "sign", "signature does not match the body")
    # A genuine signature made for the other webhook (or another product) is not this call's.
    wanted = settings.sign_actions.get(endpoint)
    if action != wanted:
        return Refusal(401, "action", f"signed for {action!r}, this webhook takes {wanted!r}")
    if biz_type != settings.sign_biz_type:
        return Refusal(
            401, "bizType", f"signed for {biz_type!r}, Viber is {settings.sign_biz_type!r}"
        )
    if not ts.isdigit() or len(ts) > 16:
        return Refusal(401, "ts", "must be milliseconds since the epoch")
    now_ms = int((now or utcnow()).timestamp() * 1000)
    if abs(now_ms - int(ts)) > settings.sign_window * 1000:
        return Refusal(
            401, "ts", f"more than {settings.sign_window} s from server time (replay or clock skew)"
        )
    return None


def screen(
    settings: Settings,
    endpoint: str,
    client_address: str,
    token: str | None,
    headers: Mapping,
    body,
    limit: int,
) -> Refusal | None:
    """Every check of a call, in order: source and token, the size limit, the signature.
    `body` is app/auth/security.py's Body."""
    refusal = check_source(settings, client_address, settings.token_digest(token))
    if refusal is None and body.too_large:
        refusal = Refusal(413, "body", body.describe(limit))
    if refusal is None:
        refusal = check_signature(settings, endpoint, headers, body.data)
    return refusal


def signature_to_take(settings: Settings, headers: Mapping) -> signing.Signature | None:
    """A verified signature, taken (used once) in the transaction that applies its body."""
    return signing.Signature.of(headers) if settings.sign_secret else None


def take_signature(settings: Settings, headers: Mapping) -> Refusal | None:
    """Record a verified signature as used, in the current transaction; a replay if it was."""
    signature = signature_to_take(settings, headers)
    if signature is None:
        return None
    if replay.take(db.session.connection(), [signature], utcnow(), settings.sign_window)[0]:
        return Refusal(401, "sign", replay.REASON)
    return None


def recheck(settings: Settings, raw: RawBody) -> Refusal | None:
    """The authentication a refused body failed, run again with today's settings as of when it
    arrived, on what it presented then. None when it passes now (its signature is then taken,
    in the current transaction)."""
    if raw.http_status == 413 or raw.endpoint not in settings.sign_actions:
        return Refusal(
            raw.http_status,
            "body",
            "kept cut at the size limit when it arrived: it cannot be applied",
        )
    headers = Headers(json.loads(raw.headers or "{}"))
    refusal = check_source(settings, raw.remote_addr or "", headers.get(TOKEN_DIGEST))
    if refusal is None:
        refusal = check_signature(settings, raw.endpoint, headers, raw.body, now=raw.received_at)
    if refusal is None:
        refusal = take_signature(settings, headers)
    return refusal


def still_refused(raw: RawBody) -> Result | None:
    """For a refused body about to be reprocessed: None when it passes authentication now,
    else the body stays refused with the reason of this check, committed."""
    refusal = recheck(current(), raw)
    if refusal is None:
        return None
    raw.http_status = refusal.http_status
    raw.reason = refusal.as_json()["error"]
    raw.reprocessed_at = utcnow()
    db.session.commit()
    return Result(refusal.http_status, "refused", raw.id, raw.request_id, error=refusal.as_json())


def keep_refused(
    settings: Settings,
    endpoint: str,
    body: bytes,
    content_type: str | None,
    headers: Mapping,
    remote_addr: str | None,
    refusal: Refusal,
    token: str | None = None,
) -> bool:
    """Store a refused body, or only count it once refusals pass the keep rate per minute.

    A flood of refused calls must not fill the disk; a count per minute keeps what happened.
    The token it presented is kept as its digest, for reprocessing to check again.
    """
    now = utcnow()
    kept_last_minute = db.session.execute(
        db.select(func.count(RawBody.id)).where(
            RawBody.outcome == "refused", RawBody.received_at > now - timedelta(minutes=1)
        )
    ).scalar_one()
    if kept_last_minute < settings.keep_refused_per_minute:
        kept = {k: v for k, v in dict(headers).items() if k.lower() != TOKEN_DIGEST}
        if token:
            kept[TOKEN_DIGEST] = settings.token_digest(token)
        refuse(
            endpoint,
            body,
            content_type,
            kept,
            remote_addr,
            refusal.http_status,
            refusal.as_json()["error"],
        )
        return True
    minute = now.replace(second=0, microsecond=0)
    reason = refusal.as_json()["error"][:500]
    if not insert_ignore(
        RefusedTally, {"minute": minute, "dropped": 1, "last_reason": reason}, ["minute"]
    ):
        db.session.execute(
            db.update(RefusedTally)
            .where(RefusedTally.minute == minute)
            .values(dropped=RefusedTally.dropped + 1, last_reason=reason)
        )
    db.session.commit()
    return False


def dropped_since(hours: int = 24) -> int:
    """Refused calls counted but not kept in the last `hours`."""
    since = utcnow().replace(second=0, microsecond=0) - timedelta(hours=hours)
    return int(
        db.session.execute(
            db.select(func.coalesce(func.sum(RefusedTally.dropped), 0)).where(
                RefusedTally.minute >= since
            )
        ).scalar_one()
    )


def init_app(app) -> None:
    services(app).webhook_settings = settings = settings_from(app.config)

    @app.context_processor
    def webhook_security():
        # A callable, so pages that do not show the banners cost no query.
        return {
            "webhooks_unauthenticated": settings.unauthenticated,
            "refused_dropped": dropped_since,
        }
