"""Every setting of viberwatch: its name, default, environment name and meaning, read one way.

An app setting (`app.config[NAME]`) comes from its default here, then `instance/config.py`,
then the environment (a plain name such as `DATABASE_URL` where it has one, then
`VIBERWATCH_<NAME>`, JSON-parsed when it parses), then the mapping handed to `create_app`;
then it is parsed once to its kind (a bool, an int, a number of seconds, a text, a list of
networks...), so the code reads `app.config[NAME]` as it is. A value that does not parse
stops the app from starting, naming the setting.
A process setting is read from the environment alone, before any app exists (the instance
folder, the gunicorn server, the metrics folder). The README's configuration table lists the
documented ones; tests/test_readme.py holds the two to each other.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask import Config

from .core import signing

PREFIX = "VIBERWATCH"


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    meaning: str
    # The environment names that set it, as the README lists them; an app setting's default
    # is VIBERWATCH_<NAME> (which sets every app setting, listed or not).
    env: tuple[str, ...] = ()
    # "app": app.config; "process": read from the environment alone.
    scope: str = "app"
    # False: the app's own choice (Flask and extension settings, test hooks), left out of the
    # README's table; it can still be set like any other.
    documented: bool = True
    # The README's name for a setting it describes rather than names ("database").
    label: str = ""
    # What its value is parsed to (KINDS); by default the kind of its default value.
    kind: str = ""

    def __post_init__(self):
        if not self.env:
            default = f"{PREFIX}_{self.name}" if self.scope == "app" else self.name
            object.__setattr__(self, "env", (default,))
        if not self.kind:
            object.__setattr__(self, "kind", _kind_of(self.default))

    def parse(self, value: Any) -> Any:
        """The value as the code reads it; ValueError naming the setting when it is not one."""
        if value is None and self.kind not in ("bool", "networks"):
            return None
        try:
            return KINDS[self.kind](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.name}: {exc}") from None

    @property
    def plain(self) -> tuple[str, ...]:
        """Its environment names other than VIBERWATCH_<NAME>, read before that one."""
        return tuple(n for n in self.env if n != f"{PREFIX}_{self.name}")


def _bool(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, int):
        return value != 0
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, float):
        if not number.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        number = int(number)
    if not isinstance(number, int):
        raise ValueError(f"{value!r} is not a whole number")
    return number


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _seconds(value: Any) -> timedelta:
    return value if isinstance(value, timedelta) else timedelta(seconds=_float(value))


def _text(value: Any) -> str:
    # The environment's VIBERWATCH_ values are parsed as JSON, so a numeric token is a number.
    if isinstance(value, (dict, list)):
        raise ValueError(f"{value!r} is not a text")
    return str(value)


def networks(value: Any) -> list:
    """CIDRs or addresses from a list or a comma/space separated text."""
    if not value:
        return []
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)) for v in value
    ):
        return list(value)
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    return [ipaddress.ip_network(str(item).strip(), strict=False) for item in items]


def _mapping(value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError(f"{value!r} is not a mapping")
    return dict(value)


PUBLIC_URL_MAX = 2048
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")
# A path of RFC 3986's characters, each % starting an escape.
_URL_PATH = re.compile(r"(/([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})*)*")


def public_url(value: Any) -> str | None:
    """An http(s) address: scheme, host, optional port and path prefix; no user, query or
    fragment. Returned with the scheme and host in lower case and no trailing slash."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a URL")
    text = value.strip()
    if not text:
        return None
    if len(text) > PUBLIC_URL_MAX:
        raise ValueError(f"longer than {PUBLIC_URL_MAX} characters")
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError(
            "must be printable ASCII without spaces (an international host in its xn-- "
            "form, other characters %-escaped)"
        )
    shown = text if len(text) <= 60 else text[:57] + "..."
    if not re.match(r"https?://", text, re.IGNORECASE):
        raise ValueError(f"must start with https:// or http://, got {shown!r}")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError(f"is not a URL, got {shown!r}") from None
    if "@" in parts.netloc:
        raise ValueError("must not carry a user name or password")
    if not parts.hostname:
        raise ValueError(f"has no host, got {shown!r}")
    if not _valid_host(parts.hostname):
        raise ValueError(f"has a host that is no host name or IP address, got {shown!r}")
    try:
        parts.port  # noqa: B018 (it raises for a port that is not one)
    except ValueError:
        raise ValueError(
            f"has a port that is not a number from 0 to 65535, got {shown!r}"
        ) from None
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"must have no query (?) or fragment (#), got {shown!r}")
    path = parts.path.rstrip("/")
    if not _URL_PATH.fullmatch(path):
        raise ValueError(f"has a character its path cannot hold unescaped, got {shown!r}")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ValueError(f"its path must not hold . or .. segments, got {shown!r}")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


def _valid_host(host: str) -> bool:
    if ":" in host:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    return len(host) <= 253 and _HOST_NAME.fullmatch(host) is not None


def _cookie_secure(value: Any) -> str | bool:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return _bool(value)


KINDS = {
    "bool": _bool,
    "int": _int,
    "float": _float,
    "seconds": _seconds,
    "str": _text,
    "networks": networks,
    "mapping": _mapping,
    "cookie_secure": _cookie_secure,
    "public_url": public_url,
    "any": lambda value: value,
}


def _kind_of(default: Any) -> str:
    for kind, types in (
        ("bool", bool),
        ("int", int),
        ("float", float),
        ("seconds", timedelta),
        ("mapping", dict),
        ("str", str),
    ):
        if isinstance(default, types):
            return kind
    return "str" if default is None else "any"


def _app(name, default, meaning, **kw) -> Setting:
    return Setting(name, default, meaning, **kw)


def _fixed(name, default, meaning, kind: str = "") -> Setting:
    return Setting(name, default, meaning, documented=False, kind=kind)


def _process(name, default, meaning, *names, label="") -> Setting:
    return Setting(name, default, meaning, env=names, scope="process", label=label)


SETTINGS: tuple[Setting, ...] = (
    # The database and where the app keeps its files.
    _app(
        "DATABASE_URL",
        None,
        "where the record lives (default: SQLite file instance/viberwatch.db)",
        env=("DATABASE_URL",),
        label="database",
    ),
    _process(
        "INSTANCE_PATH",
        None,
        "where secret_key, config.py, the default SQLite database and the spool live",
        "VIBERWATCH_INSTANCE_PATH",
        label="instance folder",
    ),
    _app("SQLITE_BUSY_TIMEOUT", 30.0, "seconds a SQLite statement waits for a write lock"),
    _app("DATABASE_CONNECT_TIMEOUT", 10, "seconds to wait for a PostgreSQL connection"),
    _fixed("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True}, "SQLAlchemy engine options"),
    # Receiving bodies.
    _app("PROXY_FIX", 0, "reverse proxies whose X-Forwarded-* headers to read"),
    _app(
        "PUBLIC_URL",
        None,
        "the address NXCLOUD and operators reach viberwatch at, for the full URLs it shows",
        kind="public_url",
    ),
    _app("INGEST_BATCH_MAX", 500, "most bodies one ingest transaction applies"),
    _app(
        "INGEST_WAIT_TIMEOUT",
        30.0,
        "seconds a webhook waits for its body to be committed before 503 (still applied)",
    ),
    _app("SPOOL_FOLDER", None, "where bodies wait while the database is away (instance/spool)"),
    _app("SPOOL_RETRY_SECONDS", 1.0, "seconds between attempts to drain the spool"),
    _app("BENCH_NOOP", False, "adds POST /bench/noop, the ingest benchmark's baseline"),
    _app("SENDTIME_TZ", "UTC+08:00", "zone of NXCLOUD's sendTime"),
    _app("MAX_CONTENT_LENGTH", 256 * 1024, "largest accepted body, in bytes"),
    _app("REGISTER_BATCH_MAX", 10_000, "most registrations one POST /api/messages takes"),
    _app(
        "REGISTER_BODY_MAX",
        16 * 1024 * 1024,
        "largest body of many registrations at once (a JSON array, NDJSON), in bytes",
    ),
    _fixed("JSON_SORT_KEYS", False, "JSON answers keep their keys' order"),
    # Sessions and sign-in.
    _app("SECRET_KEY", None, "signs sessions and CSRF tokens (default: SECRET_KEY_FILE)"),
    _app("SECRET_KEY_FILE", None, "file the secret key is generated into (instance/secret_key)"),
    _app(
        "COOKIE_SECURE",
        "auto",
        "Secure session cookie: auto (over HTTPS), true or false",
        kind="cookie_secure",
    ),
    _app("PERMANENT_SESSION_LIFETIME", timedelta(hours=12), "seconds a session lasts unused"),
    _app("LOGIN_MAX_AGE", 7 * 24 * 3600, "seconds a sign-in lasts at most"),
    _app("LOGIN_FAILURE_WINDOW", 900, "seconds over which failed sign-ins are counted"),
    _app("LOGIN_MAX_FAILURES_PER_ACCOUNT", 10, "failures of a username in the window"),
    _app("LOGIN_MAX_FAILURES_PER_ADDRESS", 30, "failures per client address before 429"),
    # Password checks (Argon2, ARGON2_MEMORY_COST each) at once per process, and how long a
    # sign-in waits for one before it is answered 503.
    _app("LOGIN_CONCURRENT_CHECKS", 2, "Argon2 password checks at once per process"),
    _app("LOGIN_CHECK_WAIT", 5.0, "seconds a sign-in waits for a free check before 503"),
    # Argon2id cost: argon2-cffi's recommended defaults (RFC 9106 low-memory profile).
    _app("ARGON2_TIME_COST", 3, "Argon2id time cost of new password hashes"),
    _app("ARGON2_MEMORY_COST", 65536, "Argon2id memory cost of new password hashes, in KiB"),
    _app("ARGON2_PARALLELISM", 4, "Argon2id parallelism of new password hashes"),
    _fixed("SESSION_COOKIE_NAME", "viberwatch_session", "the session cookie's name"),
    _fixed("SESSION_COOKIE_HTTPONLY", True, "the session cookie is not readable by scripts"),
    _fixed("SESSION_COOKIE_SAMESITE", "Lax", "the session cookie's SameSite"),
    # The CSRF token lives as long as the session: a dashboard left open still works.
    _fixed(
        "WTF_CSRF_TIME_LIMIT", None, "seconds a CSRF token lasts (None: the session)", kind="int"
    ),
    # Webhook authentication.
    _app("WEBHOOK_TOKEN", "", "secret the webhook URLs carry as ?token="),
    _app("WEBHOOK_SIGN_ACCESS_KEY", "", "access key of NXCLOUD's webhook signatures"),
    _app("WEBHOOK_SIGN_SECRET", "", "secret of NXCLOUD's webhook signatures"),
    _app("WEBHOOK_SIGN_WINDOW", 300, "seconds ts may differ from server time"),
    _app("WEBHOOK_SIGN_ACTIONS", dict(signing.CALLBACK_ACTIONS), "action each webhook signs"),
    _app("WEBHOOK_SIGN_BIZ_TYPE", signing.VIBER_BIZ_TYPE, "the signature's bizType"),
    _app(
        "WEBHOOK_EVENT_LOOP",
        True,
        "with the ingest committer, answer webhooks in each worker's event loop, no thread",
    ),
    _app(
        "WEBHOOK_LOOP_BUFFER",
        8 * 1024 * 1024,
        "bytes of bodies a worker's event loop holds for a committer that is not reading; "
        "past it a webhook is answered 503 at once",
    ),
    _app("WEBHOOK_ALLOW_NETWORKS", "", "CIDRs allowed to call the webhooks", kind="networks"),
    _app(
        "TRUSTED_PROXIES", "", "proxies whose X-Forwarded-* headers are believed", kind="networks"
    ),
    _app("WEBHOOK_REFUSED_KEEP_PER_MINUTE", 60, "refused webhook bodies kept per minute"),
    _app("REJECTED_KEEP_BYTES", 1024**3, "never-applied bodies kept at most, in bytes (0: all)"),
    _app("REJECTED_KEEP_DAYS", 30, "days never-applied bodies are kept (0: until purged)"),
    _app("AUDIT_RETENTION_DAYS", 365, "days audit records are kept, deleted by purge (0: all)"),
    # Sending through NXCLOUD.
    _app("NXCLOUD_BASE_URL", "https://api2.nxcloud.com", "NXCLOUD's API, for sending"),
    _app("NXCLOUD_ACCESS_KEY", None, "access key that signs sends"),
    _app("NXCLOUD_ACCESS_SECRET", None, "its secret (never sent, only used to sign)"),
    _app("NXCLOUD_APPKEY", None, "the Viber application's appkey"),
    _app("NXCLOUD_RATE_TYPE", "Session", "rateType of sent texts"),
    _app("NXCLOUD_TIMEOUT", 10, "seconds to wait for NXCLOUD's answer to a send", kind="float"),
    _app(
        "PROXY_ALLOW_NETWORKS",
        "",
        "CIDRs that may send through the send proxy without an API token",
        kind="networks",
    ),
    # Alerts.
    _app(
        "ALERT_RULES", None, "alert rules (None: the built-in ones; []: alerting off)", kind="any"
    ),
    _app("ALERT_URL", None, "where firing and resolved alerts are POSTed"),
    _app("ALERT_INTERVAL", 60, "seconds between evaluations per process (0: none)", kind="float"),
    _app(
        "ALERT_RETRY_BACKOFF",
        30,
        "seconds before the 2nd attempt, doubled after each",
        kind="float",
    ),
    _app("ALERT_MAX_ATTEMPTS", 6, "delivery attempts per notice"),
    _app("ALERT_TIMEOUT", 10, "seconds to wait for the alert URL", kind="float"),
    _fixed("ALERT_CLOCK", None, "a callable giving the alerts' time (tests)", kind="any"),
    _fixed("ANALYTICS_CLOCK", None, "a callable giving the analytics' time (tests)", kind="any"),
    # Metrics and logs.
    _app("METRICS_TOKEN", None, "bearer token for /metrics"),
    _app("METRICS_ALLOW_NETWORKS", "", "CIDRs allowed to scrape /metrics", kind="networks"),
    _app("LOG_JSON", False, "webhook log lines as JSON"),
    _process(
        "PROMETHEUS_MULTIPROC_DIR", None, "metrics add up across gunicorn workers (an empty dir)"
    ),
    # Live updates.
    _app(
        "REDIS_URL",
        None,
        "Redis for the live wake-up across processes",
        env=("REDIS_URL", "VIBERWATCH_REDIS_URL"),
    ),
    _app("LIVE_POLL_INTERVAL", 1.0, "seconds between reads of the activity log unwoken"),
    _app("LIVE_SQLITE_WATCH_INTERVAL", 0.01, "seconds between checks of a SQLite file (0: off)"),
    _app("LIVE_GAP_WAIT", 1.0, "seconds to wait for an activity id not yet committed"),
    _app("LIVE_QUEUE_BATCHES", 500, "batches a socket may have waiting before it is closed"),
    _app("LIVE_FEED_CAP", 50, "longest live feed, in events"),
    _app("LIVE_CHANNEL", "viberwatch_activity", "Redis or NOTIFY channel of the wake-up"),
    _app("LIVE_HELLO_TIMEOUT", 10.0, "seconds a new socket has to send its hello"),
    # Seconds between checks that each socket's sign-in is still open (a logout in this
    # process is acted on at once).
    _app("LIVE_SESSION_CHECK_INTERVAL", 4.0, "seconds between checks of each socket's sign-in"),
    # Largest message a page may send (its hello is a few hundred bytes): a bigger one closes
    # the socket (1009) as it arrives, instead of being read whole into memory.
    _app("LIVE_MAX_MESSAGE", 64 * 1024, "largest message a page may send on its socket"),
    # Pings find sockets whose peer vanished without closing.
    _fixed("SOCK_SERVER_OPTIONS", {"ping_interval": 25}, "flask-sock's server options"),
    # The server (gunicorn.conf.py, app/serving.py, the Makefile).
    _process("HOST", "127.0.0.1", "where make run and make serve listen"),
    _process("PORT", 8000, "the port they listen on (make: 5000)"),
    _process("WEB_CONCURRENCY", min(4, multiprocessing.cpu_count() * 2), "gunicorn workers"),
    _process("GUNICORN_THREADS", 64, "threads per gunicorn worker"),
    _process("GUNICORN_HEAD_TIMEOUT", 10.0, "seconds for a request line and headers"),
    _process("GUNICORN_BODY_TIMEOUT", 30.0, "seconds for the body after them"),
    _process("GUNICORN_BODY_BUFFER", 1024 * 1024, "body bytes read ahead per request"),
    _process("GUNICORN_BUFFER_TOTAL", 64 * 1024 * 1024, "read-ahead bytes per worker in all"),
    _process(
        "INGEST_COMMITTER",
        True,
        "one process applies the bodies of every gunicorn worker (false: each worker its own)",
        "VIBERWATCH_INGEST_COMMITTER",
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}


def default(name: str) -> Any:
    return BY_NAME[name].default


def defaults() -> dict[str, Any]:
    """The default of every app setting (mutable ones copied)."""
    return {
        s.name: s.default.copy() if isinstance(s.default, dict) else s.default
        for s in SETTINGS
        if s.scope == "app"
    }


def load(config: Config, overrides: dict | None = None) -> None:
    """Fill an app's config: defaults, instance/config.py, the environment, `overrides`."""
    config.from_mapping(defaults())
    config.from_pyfile("config.py", silent=True)
    for s in SETTINGS:
        for name in s.plain if s.scope == "app" else ():
            if os.environ.get(name):
                config[s.name] = os.environ[name]
    config.from_prefixed_env(prefix=PREFIX)
    if overrides:
        config.from_mapping(overrides)
    for s in SETTINGS:
        if s.scope == "app":
            config[s.name] = s.parse(config.get(s.name))


def process(name: str) -> Any:
    """A process setting from the environment, of its default's type (or its default)."""
    s = BY_NAME[name]
    assert s.scope == "process", name
    value = next((os.environ[n] for n in s.env if os.environ.get(n)), None)
    if value is None:
        return s.default
    if isinstance(s.default, bool):
        return value.strip().lower() not in ("0", "false", "no", "off")
    if isinstance(s.default, float):
        return float(value)
    if isinstance(s.default, int):
        return int(float(value))
    return value
