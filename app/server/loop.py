"""Webhooks answered in a gunicorn worker's event loop, without a request thread.

Under the production command each worker's main loop reads a request whole before it hands
it to a thread (worker.py). A webhook whose answer depends only on its body being applied,
which is nearly every one, needs no thread at all: the loop makes the view's decisions through
the same webhook pipeline (app/webhooks/pipeline.py: source, token, size, signature, the
answer and its headers), frames the body to the server's ingest committer
(app/ingest/committer/) on one connection per worker, never waiting on it, and
writes each answer when the committer sends it back, in the order the bodies went. No thread
is woken to wait and woken again to answer, and Flask's dispatch is skipped; the answer is
the view's, byte for byte (the same status, body and headers), and the request gets the
same access-log line, webhook log line and metrics.

Anything the view would answer otherwise goes to a thread exactly as before: a refused or
oversized call (it is kept as refused there), chunked bodies, HTTP/1.0, a URL other than the
two webhook paths, a stopping worker, no committer. If the committer goes away with bodies
unanswered, each goes to a thread too, which applies it itself (a second copy of a body the
committer did apply is a duplicate of it). A body not committed within INGEST_WAIT_TIMEOUT is
answered 503, as from a thread; it is still applied.
"""

from __future__ import annotations

import collections
import itertools
import logging
import selectors
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser
from werkzeug.wrappers import Request

from ..auth import security
from ..core import periodic
from ..core.services import services
from ..ingest import NOT_IN_TIME, Job, Result, answered, unavailable
from ..ingest.committer import client, protocol
from ..observability import logs
from ..webhooks import pipeline

log = logging.getLogger(__name__)

# The start every request this takes begins with (a cheap first test in the loop).
PREFIX = b"POST /webhooks/viber/"
# Seconds before a worker tries again to reach a committer it could not reach.
RECONNECT_SECONDS = 1.0
# The answer past WEBHOOK_LOOP_BUFFER: the body is not taken, the sender may send it again.
BUSY = "not taken: the ingest committer is not keeping up; send it again later"


class Written:
    """What gunicorn's Response writes, kept (it is sent without blocking the loop)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.parts.append(bytes(data))

    send = sendall

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


@dataclass(eq=False)
class Waiting:
    """A webhook handed to the committer from the loop, until it is answered."""

    conn: object
    request: bytes  # the request as it arrived, for a thread should the committer go away
    rest: bytes  # what the client sent after it (its next request)
    req: object  # gunicorn's Request
    resp: object  # gunicorn's Response, writing into `written`
    written: Written
    environ: dict
    endpoint: str
    address: str
    started: float
    deadline: float
    answered: bool = False


class WebhookLoop:
    """The webhooks of one worker's event loop (`worker` is worker.py's SlowClientWorker)."""

    def __init__(self, worker, path: str):
        self.worker = worker
        self.app = worker.wsgi
        self.path = path
        self.wait_seconds = self.app.config["INGEST_WAIT_TIMEOUT"]
        self.limit = self.app.config["MAX_CONTENT_LENGTH"]
        registry = services(self.app)
        self.settings = registry.webhook_settings
        self.trusted = self.app.config["TRUSTED_PROXIES"]
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        # Frames the committer has not read yet (it is applying a batch, or stopped): they
        # wait here, never in a blocking send, so the loop serves every other connection.
        self.out = protocol.Outgoing()
        self.out_limit = self.app.config["WEBHOOK_LOOP_BUFFER"]
        self.writable = False  # the socket is watched for room to write
        self.waiting: collections.deque[Waiting] = collections.deque()
        self.retry_at = 0.0
        # What the app starts in a process with its first request (this may be the first).
        periodic.start_all(self.app)

    # -- taking a request --------------------------------------------------------------
    def take(self, conn, data: bytearray, body_start: int, length: int) -> bool:
        """Hand a whole request (`data`, head and body, and what followed it) to the
        committer; False, untouched, when a thread must serve it."""
        if not data.startswith(PREFIX) or not self.worker.alive:
            return False
        end = body_start + length
        request = bytes(data[:end])
        written = Written()
        try:
            parser = RequestParser(self.worker.cfg, iter([request]), conn.client)
            req = next(parser)
            body = req.body.read()
            if req.version != (1, 1) or req.method != "POST" or len(body) != length:
                return False
            resp, environ = wsgi.create(req, written, conn.client, conn.server, self.worker.cfg)
            endpoint = pipeline.PATHS.get(environ.get("PATH_INFO", ""))
            if endpoint is None or environ.get("SCRIPT_NAME"):
                return False
            job, address = self._job(endpoint, environ, body)
        except Exception:  # gunicorn refuses it, or the app answers it, from a thread
            return False
        if job is None or self._connection() is None:
            return False
        # `written` may hold a 100 Continue already (gunicorn's, for a client that asked for
        # one and sent its body anyway): it goes out before the answer, as from a thread.
        waiting = Waiting(
            conn,
            request,
            bytes(data[end:]),
            req,
            resp,
            written,
            environ,
            endpoint,
            address,
            time.perf_counter(),
            time.monotonic() + self.wait_seconds,
        )
        if self.out.size >= self.out_limit:
            # The committer has not read what it was given: answered at once, on the loop's
            # next turn (a pipelined burst does not recurse), and nothing waits for it.
            waiting.answered = True
            self.worker.method_queue.defer(self._write_answer, waiting, unavailable(BUSY))
            return True
        if not self._send(job):
            return False
        self.waiting.append(waiting)
        return True

    def _job(self, endpoint: str, environ: dict, body: bytes) -> tuple[Job | None, str]:
        """The webhook pipeline's decisions (app/webhooks/pipeline.py); no job when the app
        answers the call itself, from a thread (and keeps it, when refused)."""
        address = pipeline.prepare(environ, self.trusted)
        request = Request(environ)
        if len(body) > self.limit or pipeline.to_flask(environ, request.args):
            return None, address
        call = pipeline.Call(
            endpoint,
            address,
            request.args,
            request.headers,
            request.content_type,
            security.Body(body, len(body), False),
        )
        if pipeline.screen(self.settings, call, self.limit) is not None:
            return None, address
        return pipeline.job_of(self.settings, call), address

    # -- the committer's connection ----------------------------------------------------
    def _connection(self) -> socket.socket | None:
        if self.sock is not None:
            return self.sock
        now = time.monotonic()
        if now < self.retry_at:
            return None
        self.sock = client.connect(self.path, None)  # not waiting, not blocking
        if self.sock is None:
            self.retry_at = now + RECONNECT_SECONDS
            return None
        self.writable = False
        self.worker.poller.register(self.sock, selectors.EVENT_READ, self._ready)
        return self.sock

    def _send(self, job: Job) -> bool:
        """Queue a body's frame for the committer; False when the connection is gone."""
        self.out.add(protocol.job_frame(job))
        return self._flush()

    def _flush(self) -> bool:
        """Write what the committer takes now; what it does not wait for the socket to be
        writable. False when the connection is gone (its bodies went to threads)."""
        sock = self.sock
        try:
            done = self.out.flush(sock)
        except OSError:
            # Not taken whole: the committer drops a frame cut short with its connection.
            self._lost()
            return False
        if done == self.writable:  # watch for room only while something waits
            self.writable = not done
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.writable else 0)
            self.worker.poller.modify(sock, events, self._ready)
        return True

    def _ready(self, sock: socket.socket) -> None:
        if self.sock is not sock:
            return
        if self.out and not self._flush():
            return
        self._readable(sock)

    def _readable(self, sock: socket.socket) -> None:
        try:
            chunk = sock.recv(protocol.READ_CHUNK, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._lost()
            return
        self.buffer += chunk
        try:
            answers = protocol.frames(self.buffer)
        except ValueError:
            log.error("the ingest committer sent a frame that is not one")
            self._lost()
            return
        for meta, _ in answers:
            if self.sock is not sock:  # lost meanwhile: its bodies went to threads
                return
            if not self.waiting:  # more answers than bodies: not ours to trust
                self._lost()
                return
            waiting = self.waiting.popleft()
            try:
                result = Result(**meta)
            except TypeError:
                log.error("the ingest committer sent an answer that is not one")
                self.waiting.appendleft(waiting)
                self._lost()
                return
            if not waiting.answered:
                self._answer(waiting, result)

    def _lost(self) -> None:
        """The committer went away: each body it has not answered goes to a thread, which
        applies it itself."""
        sock, self.sock = self.sock, None
        self.buffer.clear()
        self.out.clear()
        self.retry_at = time.monotonic() + RECONNECT_SECONDS
        if sock is not None:
            try:
                self.worker.poller.unregister(sock)
            except (KeyError, ValueError, OSError):
                pass
            sock.close()
        waiting, self.waiting = self.waiting, collections.deque()
        for w in waiting:
            if not w.answered:
                self.worker.serve_in_thread(w.conn, w.request + w.rest)

    # -- answering ---------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        """Answer 503 what the committer has not answered within INGEST_WAIT_TIMEOUT (its
        answer, when it comes, is dropped; the body is still applied)."""
        due = list(itertools.takewhile(lambda w: w.deadline <= now, self.waiting))
        for w in due:
            if not w.answered:
                self._answer(w, unavailable(NOT_IN_TIME))

    def _answer(self, w: Waiting, result: Result) -> None:
        w.answered = True
        self._write_answer(w, result)

    def _write_answer(self, w: Waiting, result: Result) -> None:
        w.request = b""  # kept only to hand the request to a thread, which it no longer needs
        try:
            self._write(w, result)
        except Exception:  # the loop serves every other connection: this one ends
            log.exception("a webhook answer could not be written")
            self.worker.close_connection(w.conn)

    def _write(self, w: Waiting, result: Result) -> None:
        worker = self.worker
        response = pipeline.answer(self.app, result)
        resp = w.resp
        if not worker.alive or not worker.cfg.keepalive:
            resp.force_close()
        elif len(worker.keepalived_conns) >= worker.max_keepalived:
            resp.force_close()
        resp.start_response(response.status, response.headers.to_wsgi_list())
        resp.write(response.get_data())
        resp.close()
        seconds = time.perf_counter() - w.started
        worker.log.access(resp, w.req, w.environ, timedelta(seconds=seconds))
        logs.record_webhook(
            w.endpoint, result, result.outcome, result.http_status, seconds, w.address
        )
        answered(self.app, result)
        worker.answer(w.conn, w.written.take(), w.rest, keep=not resp.should_close())


def starter(worker) -> WebhookLoop | None:
    """The worker's webhook loop, when its server has an ingest committer and the setting
    WEBHOOK_EVENT_LOOP is on."""
    path = client.address()
    app = getattr(worker, "wsgi", None)
    if not path or app is None or not getattr(app, "config", {}).get("WEBHOOK_EVENT_LOOP"):
        return None
    return WebhookLoop(worker, path)
