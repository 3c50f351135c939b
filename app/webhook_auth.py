"""Authentication of the webhook calls, and the bounded keeping of refused bodies.

Three checks, each on when configured, in any combination: the source network
(WEBHOOK_ALLOW_NETWORKS, X-Forwarded-For honoured only from TRUSTED_PROXIES), a secret
token in the URL (WEBHOOK_TOKEN), and NXCLOUD's request signature (WEBHOOK_SIGN_ACCESS_KEY
and WEBHOOK_SIGN_SECRET, `ts` within WEBHOOK_SIGN_WINDOW seconds). No `request` here.
"""
from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Mapping, Optional

from sqlalchemy import func

from . import ingest, signing
from .models import RawBody, RefusedTally, db, utcnow
from .security import parse_networks

SIGN_HEADERS = ("accessKey", "ts", "bizType", "action", "sign")


@dataclass(frozen=True)
class Settings:
    token: Optional[str] = None
    sign_access_key: Optional[str] = None
    sign_secret: Optional[str] = None
    sign_window: int = 300
    networks: list = field(default_factory=list)
    keep_refused_per_minute: int = 60

    @property
    def unauthenticated(self) -> bool:
        """True while anyone who can reach the URL can post a body that is applied."""
        return not (self.token or self.sign_secret or self.networks)


def _text(value) -> Optional[str]:
    # The environment's VIBERWATCH_ values are parsed as JSON, so a numeric token is an int.
    return None if value in (None, "") else str(value)


def settings_from(config: Mapping) -> Settings:
    """Settings from the app config; a half-configured signature is a startup error."""
    access_key = _text(config.get("WEBHOOK_SIGN_ACCESS_KEY"))
    secret = _text(config.get("WEBHOOK_SIGN_SECRET"))
    if bool(access_key) != bool(secret):
        raise ValueError("WEBHOOK_SIGN_ACCESS_KEY and WEBHOOK_SIGN_SECRET go together")
    window = int(config.get("WEBHOOK_SIGN_WINDOW") or 300)
    if window <= 0:
        raise ValueError("WEBHOOK_SIGN_WINDOW must be a positive number of seconds")
    return Settings(
        token=_text(config.get("WEBHOOK_TOKEN")),
        sign_access_key=access_key,
        sign_secret=secret,
        sign_window=window,
        networks=parse_networks(config.get("WEBHOOK_ALLOW_NETWORKS"), "WEBHOOK_ALLOW_NETWORKS"),
        keep_refused_per_minute=int(config.get("WEBHOOK_REFUSED_KEEP_PER_MINUTE", 60)),
    )


@dataclass(frozen=True)
class Refusal:
    http_status: int
    field: str
    reason: str

    def as_json(self) -> dict:
        return {"error": f"{self.field}: {self.reason}", "field": self.field, "reason": self.reason}


def check_source(settings: Settings, client_address: str, token: Optional[str]) -> Optional[Refusal]:
    """The checks that need no body: source network, then URL token."""
    if settings.networks:
        try:
            ip = ipaddress.ip_address(client_address)
        except ValueError:
            ip = None
        if ip is None or not any(ip in net for net in settings.networks):
            return Refusal(403, "source", f"address {client_address or 'unknown'} is not allowed")
    if settings.token:
        if not token:
            return Refusal(401, "token", "missing; the webhook URL carries ?token=")
        if not hmac.compare_digest(token.encode(), settings.token.encode()):
            return Refusal(401, "token", "does not match")
    return None


def check_signature(settings: Settings, headers: Mapping, body: bytes,
                    now: Optional[datetime] = None) -> Optional[Refusal]:
    """NXCLOUD's signature over the exact body, and `ts` within the window (replays)."""
    if not settings.sign_secret:
        return None
    missing = [h for h in SIGN_HEADERS if not headers.get(h)]
    if missing:
        return Refusal(401, "sign", f"missing signature headers: {', '.join(missing)}")
    access_key = headers.get("accessKey")
    if not hmac.compare_digest(access_key.encode(), settings.sign_access_key.encode()):
        return Refusal(401, "accessKey", "unknown accessKey")
    ts = headers.get("ts")
    expected = signing.sign(access_key, headers.get("action"), headers.get("bizType"), ts, body,
                            settings.sign_secret)
    if not hmac.compare_digest(headers.get("sign").strip().lower().encode(), expected.encode()):
        return Refusal(401, "sign", "signature does not match the body")
    if not ts.isdigit() or len(ts) > 16:
        return Refusal(401, "ts", "must be milliseconds since the epoch")
    now_ms = int((now or utcnow()).timestamp() * 1000)
    if abs(now_ms - int(ts)) > settings.sign_window * 1000:
        return Refusal(401, "ts", f"more than {settings.sign_window} s from server time (replay or clock skew)")
    return None


def keep_refused(settings: Settings, endpoint: str, body: bytes, content_type: Optional[str],
                 headers: Mapping, remote_addr: Optional[str], refusal: Refusal) -> bool:
    """Store a refused body, or only count it once refusals pass the keep rate per minute.

    A flood of refused calls must not fill the disk; a count per minute keeps what happened.
    """
    now = utcnow()
    kept_last_minute = db.session.execute(
        db.select(func.count(RawBody.id)).where(RawBody.outcome == "refused",
                                                RawBody.received_at > now - timedelta(minutes=1))
    ).scalar_one()
    if kept_last_minute < settings.keep_refused_per_minute:
        ingest.refuse(endpoint, body, content_type, dict(headers), remote_addr,
                      refusal.http_status, refusal.as_json()["error"])
        return True
    minute = now.replace(second=0, microsecond=0)
    reason = refusal.as_json()["error"][:500]
    if not ingest.insert_ignore(RefusedTally, {"minute": minute, "dropped": 1, "last_reason": reason},
                                ["minute"]):
        db.session.execute(db.update(RefusedTally).where(RefusedTally.minute == minute)
                           .values(dropped=RefusedTally.dropped + 1, last_reason=reason))
    db.session.commit()
    return False


def dropped_since(hours: int = 24) -> int:
    """Refused calls counted but not kept in the last `hours`."""
    since = utcnow().replace(second=0, microsecond=0) - timedelta(hours=hours)
    return int(db.session.execute(
        db.select(func.coalesce(func.sum(RefusedTally.dropped), 0))
        .where(RefusedTally.minute >= since)).scalar_one())


def init_app(app) -> None:
    app.extensions["viberwatch.webhook_auth"] = settings_from(app.config)

    @app.context_processor
    def webhook_security():
        # A callable, so pages that do not show the banners cost no query.
        return {"webhooks_unauthenticated": app.extensions["viberwatch.webhook_auth"].unauthenticated,
                "refused_dropped": dropped_since}
