"""What the areas make once per app and use from elsewhere: one object on the app
(`app.extensions["viberwatch"]`), each service a typed attribute set by its area's init_app,
instead of string keys in `app.extensions`. No Flask import: an app is handed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the types only: no area is imported at run time
    from argon2 import PasswordHasher
    from flask import Flask

    from ..alerts.rules import Rule
    from ..auth.throttle import PasswordChecks
    from ..ingest.transaction import WriteLock
    from ..ingest.writer import Writer
    from ..live.hub import Hub
    from ..records.retention import Keeper
    from ..webhooks.checks import Settings as WebhookSettings
    from .periodic import Periodic

KEY = "viberwatch"


@dataclass
class Services:
    # The zone of NXCLOUD's sendTime (SENDTIME_TZ), parsed once.
    sendtime_zone: tzinfo | None = None
    # This process's ingest writer, and the kernel lock around its SQLite transactions.
    writer: Writer | None = None
    ingest_lock: WriteLock | None = None
    # The webhooks' authentication settings (token, signature, allowed networks).
    webhook_settings: WebhookSettings | None = None
    # Sign-in: the password hasher and the bound on password checks at once.
    hasher: PasswordHasher | None = None
    password_checks: PasswordChecks | None = None
    # This process's live hub (made with the first socket or commit).
    live: Hub | None = None
    # Alert rules, and the threads started with a process's first request.
    alert_rules: list[Rule] = field(default_factory=list)
    alert_runner: Periodic | None = None
    alert_rules_recorded: bool = False  # this process has recorded the rules in effect
    metrics_sampler: Periodic | None = None
    started_by_requests: list[Periodic] = field(default_factory=list)
    # How long never-applied bodies are kept, and what this process kept since it last looked.
    retention: Keeper | None = None


def services(app: Flask) -> Services:
    """The app's services (made with the app, app/__init__.py)."""
    return app.extensions[KEY]
