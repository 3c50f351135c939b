"""The worker gunicorn.conf.py plugs into gunicorn: a threaded worker that slow clients
cannot starve, which answers webhooks in its event loop (loop.py).

gunicorn's gthread worker hands a connection to a thread as soon as its first byte arrives;
the thread then waits for the rest of the request head and body. A client that sends one
byte every few seconds holds that thread for as long as it likes, and a few hundred of them
hold every thread: /healthz and the webhooks stop answering. SlowClientWorker reads each
request's head and body in the worker's main loop instead (non-blocking, next to the accept
and keep-alive polling the loop already does), and hands a request to a thread only once it
is all there. Slow requests cost a socket and a buffer, never a thread, and are cut off
(408) when their head takes longer than GUNICORN_HEAD_TIMEOUT or their body longer than
GUNICORN_BODY_TIMEOUT. Threads stay threads: no monkey-patching, WebSockets keep theirs.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from dataclasses import dataclass, field
from functools import partial

from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, ThreadWorker

from .. import config

HEAD_TIMEOUT = config.process("GUNICORN_HEAD_TIMEOUT")  # seconds for a request line and headers
BODY_TIMEOUT = config.process("GUNICORN_BODY_TIMEOUT")  # seconds for the body after them
# Body bytes read ahead per request; a longer body (more than the app takes anyway, by
# default) is handed over once this much is in, and its thread reads the rest within
# GUNICORN_BODY_TIMEOUT.
BODY_BUFFER = config.process("GUNICORN_BODY_BUFFER")
# Read-ahead bytes a worker holds at most; past it a request with a body is answered 503.
BUFFER_TOTAL = config.process("GUNICORN_BUFFER_TOTAL")
RECV = 64 * 1024
ACCEPT_BATCH = 64
SWEEP_SECONDS = 0.25
END_OF_HEAD = b"\r\n\r\n"
EXPECT_CONTINUE_RE = re.compile(
    rb"\r\nexpect[ \t]*:[ \t]*100-continue[ \t]*(?=\r\n)", re.IGNORECASE
)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _answer(status: str) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(status) + 1}\r\n\r\n{status}\n"
    ).encode()


TIMED_OUT = _answer("408 Request Timeout")
BUSY = _answer("503 Service Unavailable")


@dataclass(eq=False)
class Reading:
    """A connection whose next request is still arriving."""

    conn: object
    deadline: float
    idle_deadline: float | None  # a kept-alive connection that has sent nothing yet
    data: bytearray = field(default_factory=bytearray)
    body_start: int | None = None  # where the body begins, once the head is in
    length: int = 0  # declared body length
    chunked: bool = False
    chunk_at: int = 0  # where the next chunk's size line begins
    registered: bool = False


# The transfer codings gunicorn takes in a request (chunked last); any other is answered 501.
CODINGS = frozenset((b"chunked", b"identity", b"gzip", b"deflate", b"compress"))


def parse_head(head: bytes) -> tuple[int | None, bool, bool]:
    """(Content-Length, chunked, expects 100-continue) of a request head; a length of None
    for a head this reader does not understand or whose framing is not chunked as gunicorn
    reads it (an unknown coding, chunked not last): gunicorn then answers it at once (400,
    501), without waiting for a body."""
    length, expect = 0, False
    codings: list[bytes] = []
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            if not value.isdigit():
                return None, False, False
            length = int(value)
        elif name == b"transfer-encoding":
            codings += [c.strip(b" \t") for c in value.split(b",")]
        elif name == b"expect":
            expect = value == b"100-continue"
    if codings and (codings[-1] != b"chunked" or not CODINGS.issuperset(codings)):
        return None, False, False
    return length, bool(codings), expect


def chunked_end(data: bytearray, at: int) -> tuple[bool | None, int]:
    """Walk chunks from `at`: (True, _) when the last chunk and its trailer are in, (None, _)
    when the framing is malformed, (False, where to resume) when more must arrive."""
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return (None, at) if len(data) - at > 1024 else (False, at)
        size_text = bytes(data[at:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return None, at
        if size == 0:
            trailer = line_end + 2
            if data[trailer : trailer + 2] == b"\r\n" or data.find(END_OF_HEAD, line_end) >= 0:
                return True, at
            return False, at
        following = line_end + 2 + size + 2
        if following > len(data):
            return False, at
        at = following


class DeadlineSocket:
    """A socket whose reads all end by one deadline (what is left of a handed-over body)."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline = deadline

    def recv(self, size: int) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request body not received in time")
        self.sock.settimeout(left)
        try:
            return self.sock.recv(size)
        finally:
            self.sock.settimeout(None)

    def gettimeout(self):
        return self.sock.gettimeout()

    def settimeout(self, value):
        self.sock.settimeout(value)


class SlowClientWorker(ThreadWorker):
    """gunicorn's gthread worker whose main loop reads each request whole before a thread
    serves it (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading: dict[object, Reading] = {}
        self.buffered = 0
        self.next_sweep = 0.0
        cfg = self.cfg
        line, fields, size = (
            cfg.limit_request_line,
            cfg.limit_request_fields,
            cfg.limit_request_field_size,
        )
        # Past this without its end, the head is gunicorn's to refuse.
        self.head_limit = (line + fields * (size + 2) + 4) if line and size else 1024 * 1024
        self.webhooks = None  # app/webhooks/loop.py's WebhookLoop, made in the worker process
        self.webhooks_made = False

    def _reads_ahead(self, conn) -> bool:
        # TLS and HTTP/2 prior knowledge are read by gunicorn itself, as before.
        return not self.cfg.is_ssl and not negotiation.prior_knowledge_allowed(
            self.cfg, conn.client
        )

    def enqueue_req(self, conn, ahead: bytes | None = None):
        if getattr(conn, "prefetched", None) is not None or not self._reads_ahead(conn):
            super().enqueue_req(conn)
            return
        now = time.monotonic()
        # Bytes a previous request's body read ahead belong to this one.
        if ahead is not None:
            data = bytearray(ahead)
        elif conn.parser is not None:
            data = bytearray(conn.parser.unreader.take_buffered())
        else:
            data = bytearray()
        if conn.parser is not None:
            conn.parser.unreader.sock = conn.sock
        reading = Reading(
            conn,
            deadline=now + HEAD_TIMEOUT,
            data=data,
            idle_deadline=now + self.cfg.keepalive if conn.initialized and not data else None,
        )
        self.reading[conn] = reading
        self.buffered += len(data)
        conn.sock.setblocking(False)
        if data and self._progress(reading, now):
            return
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, reading))
        reading.registered = True

    def _readable(self, reading: Reading, sock) -> None:
        try:
            chunk = sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(reading)
            return
        if not chunk:
            self._close(reading)
            return
        if self.buffered + len(chunk) > BUFFER_TOTAL:
            self._close(reading, BUSY)
            return
        reading.data += chunk
        reading.idle_deadline = None
        self.buffered += len(chunk)
        self._progress(reading, time.monotonic())

    def _progress(self, reading: Reading, now: float) -> bool:
        """Hand the request over if it is all in (or is gunicorn's to refuse); True if so."""
        data = reading.data
        if reading.body_start is None:
            end = data.find(END_OF_HEAD)
            if end < 0:
                if len(data) > self.head_limit:
                    return self._hand_over(reading)
                return False
            reading.body_start = end + len(END_OF_HEAD)
            length, reading.chunked, expect = parse_head(bytes(data[: reading.body_start]))
            if length is None:
                return self._hand_over(reading)
            reading.length = length
            reading.chunk_at = reading.body_start
            reading.deadline = now + BODY_TIMEOUT
            if expect and (length or reading.chunked) and len(data) == reading.body_start:
                # The client waits for this before it sends the body; answered here, so
                # the header goes (gunicorn would answer it again, after the body).
                head = EXPECT_CONTINUE_RE.sub(b"", bytes(data[: reading.body_start]), count=1)
                reading.data = data = bytearray(head)
                reading.body_start = len(head)
                reading.chunk_at = reading.body_start
                try:
                    reading.conn.sock.send(CONTINUE)
                except OSError:
                    pass
        body = len(data) - reading.body_start
        if body >= BODY_BUFFER:
            return self._hand_over(reading, partial_body=True)
        if reading.chunked:
            done, reading.chunk_at = chunked_end(data, reading.chunk_at)
            if done is False:
                return False
            return self._hand_over(reading)
        if body < reading.length:
            return False
        return self._hand_over(reading)

    def _forget(self, reading: Reading) -> None:
        self.reading.pop(reading.conn, None)
        self.buffered -= len(reading.data)
        if reading.registered:
            try:
                self.poller.unregister(reading.conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            reading.registered = False

    def _hand_over(self, reading: Reading, partial_body: bool = False) -> bool:
        self._forget(reading)
        webhooks = self._webhooks()
        if (
            webhooks is not None
            and not partial_body
            and not reading.chunked
            and reading.body_start is not None
            and webhooks.take(reading.conn, reading.data, reading.body_start, reading.length)
        ):
            return True
        self.serve_in_thread(
            reading.conn, bytes(reading.data), reading.deadline if partial_body else None
        )
        return True

    # -- webhooks answered in this loop (app/webhooks/loop.py) -------------------------
    def _webhooks(self):
        if not self.webhooks_made:
            from . import loop

            self.webhooks_made = True
            self.webhooks = loop.starter(self)
        return self.webhooks

    def serve_in_thread(self, conn, data: bytes, body_deadline: float | None = None) -> None:
        """A request read ahead (and what followed it), served by a thread; one whose body is
        still arriving (`body_deadline`) is read on by the thread until then."""
        conn.prefetched = data
        conn.body_deadline = body_deadline
        conn.data_ready = True
        super().enqueue_req(conn)

    def answer(self, conn, data: bytes, ahead: bytes, keep: bool) -> None:
        """Send an answer written in this loop, then read the connection's next request (or
        close it)."""
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close_connection(conn)
            return
        if sent == len(data):
            self._next(conn, ahead, keep)
            return
        # The client is not reading: a thread waits for it (bounded), not this loop.
        future = self.tpool.submit(self._send_rest, conn, data[sent:])
        future.add_done_callback(
            lambda f: self.method_queue.defer(
                self._next, conn, ahead, keep and not f.cancelled() and f.exception() is None
            )
        )

    @staticmethod
    def _send_rest(conn, data: bytes) -> None:
        conn.sock.settimeout(BODY_TIMEOUT)
        try:
            conn.sock.sendall(data)
        finally:
            conn.sock.setblocking(False)

    def _next(self, conn, ahead: bytes, keep: bool) -> None:
        if not keep:
            self.close_connection(conn, graceful=True)
        elif ahead:
            self.enqueue_req(conn, ahead)
        else:
            # As gthread after a request a thread served: kept alive on the poller.
            conn.set_timeout()
            if not self.alive:
                conn.timeout = min(conn.timeout, time.monotonic() + STOP_KEEPALIVE_LINGER)
            self.keepalived_conns.append(conn)
            self.poller.register(
                conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
            )

    def close_connection(self, conn, graceful: bool = False) -> None:
        self.nr_conns -= 1
        if graceful:  # it lingers for the client's last bytes: not in this loop
            try:
                self.tpool.submit(conn.close, True)
                return
            except RuntimeError:  # the pool has shut down: the worker is ending
                pass
        conn.close()

    def _close(self, reading: Reading, answer: bytes | None = None) -> None:
        self._forget(reading)
        if answer:
            try:
                reading.conn.sock.send(answer)
            except OSError:
                pass
        self.nr_conns -= 1
        reading.conn.close()

    def handle(self, conn):
        data = getattr(conn, "prefetched", None)
        if data is not None:
            conn.prefetched = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(data)
            if conn.body_deadline is not None:
                conn.parser.unreader.sock = DeadlineSocket(conn.sock, conn.body_deadline)
        return super().handle(conn)

    def accept(self, listener):
        # Connections come in bursts (many clients cut off at once come back at once): take
        # what is waiting, not one per turn of the loop.
        for _ in range(ACCEPT_BATCH):
            if self.nr_conns >= self.worker_connections:
                return
            before = self.nr_conns
            super().accept(listener)
            if self.nr_conns == before:  # nothing was waiting
                return

    def murder_pending(self):
        """Also cut off the requests that are too slow to arrive (408), and kept-alive
        connections that stayed silent past the keep-alive timeout."""
        super().murder_pending()
        now = time.monotonic()
        # The loop turns once per event; the deadlines need looking at a few times a second.
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_SECONDS
        if self.webhooks is not None:
            self.webhooks.sweep(now)
        for reading in list(self.reading.values()):
            if reading.idle_deadline is not None and now >= reading.idle_deadline:
                self._close(reading)
            elif now >= reading.deadline:
                self._close(reading, TIMED_OUT if reading.data else None)
