"""The send proxy's way to NXCLOUD: one POST on a kept-alive HTTP/1.1 connection (no Flask, no
database).

Connections are made with the standard library's http.client and kept per process for the
next send, as httpx's pool kept them, for a fraction of httpx's CPU per call (the proxy pays
it on every send). What httpx did that matters to NXCLOUD and to the sender stays: its trust
store (httpx.create_ssl_context), a kept connection not reused once it is older than
KEEPALIVE_SECONDS or the server has closed it, no retry of a send once any of it was written,
a gzip or deflate answer given back decoded, and the timeout on the connect, on each write and
on each read. Where the environment names an HTTP proxy for NXCLOUD's address
(HTTPS_PROXY, ...; NO_PROXY), the call goes through httpx, which honours it.
"""

from __future__ import annotations

import http.client
import os
import select
import ssl
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

# As httpx's pool: a connection idle for longer is closed, not reused.
KEEPALIVE_SECONDS = 5.0
# Idle connections kept per origin and process.
IDLE_MAX = 64
USER_AGENT = "viberwatch"


class UpstreamError(Exception):
    """NXCLOUD could not be reached or answered with something that is not HTTP; `name` is
    the kind, as httpx names it (ConnectError, ReadError, RemoteProtocolError, ...)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class UpstreamTimeout(UpstreamError):
    """No connection, or no answer, within the timeout."""


@dataclass(frozen=True)
class Answer:
    status: int
    content: bytes
    content_type: str | None


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    target: str  # the path and query sent in the request line
    host_header: str
    via_proxy: bool  # the environment names a proxy for it: httpx goes


def _through_env_proxy(scheme: str, host: str) -> bool:
    proxies = urllib.request.getproxies()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)


class Upstream:
    """Kept-alive connections to NXCLOUD of one process (see the module docstring)."""

    def __init__(self, idle_max: int = IDLE_MAX, keepalive: float = KEEPALIVE_SECONDS):
        self.idle_max = idle_max
        self.keepalive = keepalive
        self._lock = threading.Lock()
        self._idle: dict[tuple, list[tuple[http.client.HTTPConnection, float]]] = {}
        self._origins: dict[str, _Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self._httpx: httpx.Client | None = None
        self._pid = os.getpid()

    def post(self, url: str, body: bytes, headers: dict, timeout: float) -> Answer:
        """POST `body` with `headers` (and Host, Content-Length, User-Agent) to `url`; NXCLOUD's
        answer, whatever its status. Raises UpstreamTimeout or UpstreamError."""
        origin = self._origin(url)
        if origin.via_proxy:
            return self._post_httpx(url, body, headers, timeout)
        key = (origin.scheme, origin.host, origin.port)
        conn = self._take(key)
        if conn is None:
            conn = self._connect(origin, timeout)
        else:
            conn.sock.settimeout(timeout)
        try:
            return self._exchange(key, conn, origin, body, headers)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """Close every kept connection (tests; a process about to end)."""
        with self._lock:
            idle, self._idle = self._idle, {}
            client, self._httpx = self._httpx, None
        for conns in idle.values():
            for conn, _ in conns:
                conn.close()
        if client is not None:
            client.close()

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(conns) for conns in self._idle.values())

    def _origin(self, url: str) -> _Origin:
        origin = self._origins.get(url)
        if origin is None:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme not in ("http", "https") or not parts.hostname:
                raise UpstreamError("UnsupportedProtocol")
            port = parts.port or (443 if scheme == "https" else 80)
            default = port == (443 if scheme == "https" else 80)
            host = parts.hostname
            shown = f"[{host}]" if ":" in host else host
            origin = _Origin(
                scheme,
                host,
                port,
                (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                shown if default else f"{shown}:{port}",
                _through_env_proxy(scheme, host),
            )
            self._origins[url] = origin
        return origin

    def _take(self, key: tuple) -> http.client.HTTPConnection | None:
        """A kept connection that is still open, the most recently used first."""
        now = time.monotonic()
        while True:
            with self._lock:
                if self._pid != os.getpid():  # a fork inherited the parent's sockets
                    self._pid, self._idle = os.getpid(), {}
                conns = self._idle.get(key)
                if not conns:
                    return None
                conn, since = conns.pop()
            if now - since <= self.keepalive and _still_open(conn):
                return conn
            conn.close()

    def _give_back(self, key: tuple, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            conns = self._idle.setdefault(key, [])
            if len(conns) < self.idle_max and self._pid == os.getpid():
                conns.append((conn, time.monotonic()))
                return
        conn.close()

    def _connect(self, origin: _Origin, timeout: float) -> http.client.HTTPConnection:
        if origin.scheme == "https":
            if self._tls is None:
                self._tls = httpx.create_ssl_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                origin.host, origin.port, timeout=timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(origin.host, origin.port, timeout=timeout)
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise UpstreamTimeout("ConnectTimeout") from None
        except (OSError, ssl.SSLError):
            conn.close()
            raise UpstreamError("ConnectError") from None
        return conn

    def _exchange(
        self,
        key: tuple,
        conn: http.client.HTTPConnection,
        origin: _Origin,
        body: bytes,
        headers: dict,
    ) -> Answer:
        try:
            conn.putrequest("POST", origin.target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", origin.host_header)
            conn.putheader("Accept", "*/*")
            conn.putheader("Accept-Encoding", "gzip, deflate")
            conn.putheader("User-Agent", USER_AGENT)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        except TimeoutError:
            raise UpstreamTimeout("WriteTimeout") from None
        except OSError:
            raise UpstreamError("WriteError") from None
        try:
            response = conn.getresponse()
            content = response.read()
        except TimeoutError:
            raise UpstreamTimeout("ReadTimeout") from None
        except http.client.HTTPException:
            raise UpstreamError("RemoteProtocolError") from None
        except OSError:
            raise UpstreamError("ReadError") from None
        content = _decoded(content, response.getheader("Content-Encoding"))
        if response.will_close:
            conn.close()
        else:
            self._give_back(key, conn)
        return Answer(response.status, content, response.getheader("Content-Type"))

    def _post_httpx(self, url: str, body: bytes, headers: dict, timeout: float) -> Answer:
        if self._httpx is None:
            with self._lock:
                if self._httpx is None:
                    self._httpx = httpx.Client(
                        timeout=timeout, limits=httpx.Limits(max_keepalive_connections=IDLE_MAX)
                    )
        try:
            answer = self._httpx.post(url, content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(type(exc).__name__) from None
        return Answer(answer.status_code, answer.content, answer.headers.get("Content-Type"))


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle connection the server has not closed: nothing to read on it (a readable idle
    socket is at its end, or holds bytes nobody asked for)."""
    sock = conn.sock
    if sock is None:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


def _decoded(content: bytes, encoding: str | None) -> bytes:
    """The body as httpx gave it: a gzip or deflate coding undone."""
    if not encoding or not content:
        return content
    for coding in reversed([c.strip().lower() for c in encoding.split(",")]):
        try:
            if coding in ("gzip", "x-gzip"):
                content = zlib.decompress(content, zlib.MAX_WBITS | 16)
            elif coding == "deflate":
                try:
                    content = zlib.decompress(content)
                except zlib.error:
                    content = zlib.decompress(content, -zlib.MAX_WBITS)
            elif coding not in ("identity", ""):
                return content
        except zlib.error:
            raise UpstreamError("DecodingError") from None
    return content
