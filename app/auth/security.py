"""Secret key, cookies, CSRF, security headers, client addresses and bounded body reading."""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Flask, current_app, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.middleware.proxy_fix import ProxyFix

from ..errors import error_response, refusal, wants_json
from ..records.models import db

csrf = CSRFProtect()

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' https: data:; connect-src 'self' ws: wss:; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
# A body of unknown length (chunked) is read to this many times the limit at most, to
# report its size; past it the length is reported as "more than".
COUNT_PAST_LIMIT = 16
READ_CHUNK = 64 * 1024


def private_folder(path: str) -> None:
    """Create a folder only its owner can enter (0700), or close one of ours left open."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    _tighten(path, 0o700)


def private_file(path: str) -> None:
    """Create an empty file only its owner can read (0600) unless it exists."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _tighten(path: str, mode: int) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, mode)


def private_sqlite(path: str, instance_path: str) -> None:
    """A SQLite file is created 0600 (its -wal and -shm files take the same mode); one in the
    instance folder, made by an earlier version with the default 0644, is closed too."""
    try:
        private_file(path)
    except FileNotFoundError:
        return  # no such folder: opening the database reports it
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(instance_path):
        for name in (path, path + "-wal", path + "-shm"):
            _tighten(name, 0o600)


def load_secret_key(app: Flask) -> None:
    """Use the configured SECRET_KEY, else the one in instance/, creating it on first run."""
    if app.config.get("SECRET_KEY"):
        return
    path = app.config.get("SECRET_KEY_FILE") or os.path.join(app.instance_path, "secret_key")
    try:
        # O_EXCL: when several workers start at once, exactly one writes the key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    with open(path) as f:
        key = f.read().strip()
    if not key:
        raise RuntimeError(f"empty secret key file {path}; delete it to have a new key made")
    app.config["SECRET_KEY"] = key


# Blueprints that machines call with their own authentication (or none needed): webhooks,
# health, metrics, the send proxy, and the benchmark's no-op endpoint.
MACHINE_BLUEPRINTS = frozenset({"webhooks", "health", "metrics", "bench", "proxy"})


class SessionInterface(SecureCookieSessionInterface):
    """COOKIE_SECURE "auto" marks the cookie Secure whenever the request came over HTTPS.
    An answer to a machine's call never refreshes a dashboard's session cookie: a webhook that
    arrives with one gets no Set-Cookie, from a request thread as from a worker's event loop
    (app/webhooks/loop.py)."""

    def should_set_cookie(self, app: Flask, session) -> bool:
        if request.blueprint in MACHINE_BLUEPRINTS and not session.modified:
            return False
        return super().should_set_cookie(app, session)

    def get_cookie_secure(self, app: Flask) -> bool:
        setting = app.config.get("COOKIE_SECURE", "auto")
        if isinstance(setting, str) and setting.lower() == "auto":
            return request.is_secure
        if isinstance(setting, str):
            return setting.lower() in ("1", "true", "yes", "on")
        return bool(setting)


def address_in(address: str, networks: list) -> bool:
    """Whether an address (text) is in one of the networks; an unparsable one is in none."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: list) -> str:
    """The caller's address: the right-most X-Forwarded-For hop not added by a trusted proxy.

    X-Forwarded-For counts only when the peer itself is a trusted proxy; each proxy appends
    the address it saw, so walking from the right past trusted hops finds the first address
    that no trusted proxy vouches beyond.
    """
    address = peer or ""
    if not trusted or not forwarded_for or not address_in(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        address = hop
        if not address_in(hop, trusted):
            break
    return address


PEER = "viberwatch.peer"


def take_client_address(environ: dict, trusted: list) -> bool:
    """The one rule, on a WSGI environ: REMOTE_ADDR becomes the client's address (PEER keeps
    the socket's peer); True when the peer is a trusted proxy."""
    peer = environ.get("REMOTE_ADDR") or ""
    environ[PEER] = peer
    if trusted and address_in(peer, trusted):
        environ["REMOTE_ADDR"] = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), trusted)
        return True
    return False


class ForwardedOnlyFromTrustedProxies:
    """WSGI middleware: the one rule for the client's address, and for the scheme, host, port
    and prefix a proxy forwards. X-Forwarded-* headers count only when the socket peer is in
    TRUSTED_PROXIES: then REMOTE_ADDR becomes client_address(), and with PROXY_FIX = n the
    other headers are read as ProxyFix reads them behind n proxies. From any other peer they
    are ignored, so every use of `request.remote_addr` (webhook allow-list, sign-in limits,
    stored bodies, logs, metrics) sees the same address."""

    def __init__(self, wsgi_app, trusted: list, hops: int):
        self.wsgi_app = wsgi_app
        self.trusted = trusted
        self.behind_proxies = (
            ProxyFix(wsgi_app, x_for=0, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops)
            if hops
            else wsgi_app
        )

    def __call__(self, environ, start_response):
        if take_client_address(environ, self.trusted):
            return self.behind_proxies(environ, start_response)
        return self.wsgi_app(environ, start_response)


def add_security_headers(response, static: bool = False):
    """The headers every answer carries (those it does not set itself)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not static:
        # Pages carry customers' phone numbers and words: keep them out of caches.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def request_client_address() -> str:
    """The current request's client address (see ForwardedOnlyFromTrustedProxies)."""
    return request.remote_addr or ""


@dataclass
class Body:
    data: bytes
    length: int | None  # the true length when known
    too_large: bool

    def describe(self, limit: int) -> str:
        size = (
            f"{self.length} bytes"
            if self.length is not None
            else f"more than {limit * COUNT_PAST_LIMIT} bytes"
        )
        return f"body of {size} is over the limit of {limit} bytes; the first {len(self.data)} bytes are kept"


def read_body(limit: int) -> Body:
    """Read the request body, keeping at most `limit` bytes and learning its true length.

    Werkzeug refuses an oversized body outright (and loses it); reading the WSGI input
    directly keeps the first `limit` bytes so the refusal can be stored.
    """
    length = request.content_length
    stream = request.environ["wsgi.input"]
    if length is not None and length <= limit:
        return Body(request.get_data(cache=False), length, False)
    if length is None and not request.environ.get("wsgi.input_terminated"):
        return Body(b"", 0, False)
    kept = bytearray()
    total = 0
    # A declared length is believed, so nothing past the limit is read; a chunked body is
    # counted up to a bound.
    cap = limit if length is not None else limit * COUNT_PAST_LIMIT + 1
    while total < cap:
        chunk = stream.read(min(READ_CHUNK, cap - total))
        if not chunk:
            break
        total += len(chunk)
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    if length is None and total <= limit:
        return Body(bytes(kept), total, False)
    if length is None and total > limit * COUNT_PAST_LIMIT:
        return Body(bytes(kept), None, True)
    return Body(bytes(kept), length if length is not None else total, True)


def _same_origin(origin: str) -> bool:
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc == request.host


def init_app(app: Flask) -> None:
    load_secret_key(app)
    app.session_interface = SessionInterface()
    trusted = app.config["TRUSTED_PROXIES"]
    hops = app.config["PROXY_FIX"]
    if hops and not trusted:
        # Forwarded headers believed from any peer would let anyone pick their address.
        raise ValueError(
            "PROXY_FIX needs TRUSTED_PROXIES: the addresses of the proxies whose "
            "X-Forwarded-* headers to believe"
        )
    app.wsgi_app = ForwardedOnlyFromTrustedProxies(app.wsgi_app, trusted, hops)
    # The login guard in auth.py decides when CSRF applies (not to webhooks or bearer calls).
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    csrf.init_app(app)

    @app.before_request
    def refuse_cross_site_websocket():
        # Browsers send cookies with a cross-site WebSocket handshake; the Origin tells.
        if request.headers.get("Upgrade", "").lower() == "websocket":
            origin = request.headers.get("Origin")
            if origin and not _same_origin(origin):
                return error_response(
                    403, "Origin", "cross-site WebSocket refused", error="Origin: not this site"
                )
        return None

    @app.before_request
    def refuse_nul_in_url():
        # No URL of ours takes a NUL; PostgreSQL cannot even compare text with one, so a
        # %00 in a path or filter would otherwise reach the database as an error.
        if "\x00" in request.path or any(
            "\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)
        ):
            return error_response(400, "URL", "contains a NUL character")
        return None

    @app.after_request
    def security_headers(response):
        return add_security_headers(response, static=request.endpoint == "static")

    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError):
        if wants_json():
            return error_response(400, "csrf_token", error.description)
        return error.description, 400, {"Content-Type": "text/plain; charset=utf-8"}

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_unavailable(error):
        # The database is away (or gave up on a lock): a retry may succeed, so 503, not 500.
        db.session.rollback()
        current_app.logger.warning("database unavailable: %s", type(error.orig).__name__)
        return refusal(503, "database", "unavailable, try again", headers={"Retry-After": "5"})

    @app.errorhandler(413)
    def too_large(error):
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return refusal(413, "body", f"larger than {limit} bytes")
