"""One ingest committer for a whole server: the process that applies every worker's bodies.

Under the production command (gunicorn.conf.py) the workers do not apply bodies themselves.
Each request thread hands its body over a Unix socket to the committer, a process of its
own started by the gunicorn master, and waits for the answer. The committer reads every body
that has arrived from any worker, applies them in one transaction (`ingest.apply_batch`,
through the same writer as in a single process, so spooling while the database is away works
the same), answers each, and reads again. So one transaction takes the bodies of all the
workers (larger batches), the transactions never wait on one another (one writer: no
file-lock turns on SQLite, no queue on the counters' rows on PostgreSQL), and the work of
applying never competes with the request threads for a worker's interpreter lock.

A worker that cannot reach the committer (not started yet, ended) applies the body itself
with its own writer thread, as without a committer: nothing waits on the committer being up.

Frames, both ways: two 4-byte big-endian lengths, then that many bytes of JSON and of body.
A request carries the body and its metadata, an answer the Result (and no body).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flask import Flask

from . import replay
from .ingest import NOT_IN_TIME, Job, Link, Result, stamp_arrival, unavailable, writer_of

log = logging.getLogger(__name__)

# The socket's path, set by the master (gunicorn.conf.py) for its workers.
SOCKET_ENV = "VIBERWATCH_INGEST_SOCKET"
# What the master runs (`python -m`).
MODULE = "app.records.committer"
FRAME = struct.Struct("!II")
# Most bodies the committer reads into one batch before applying (INGEST_BATCH_MAX still caps
# a transaction); what is left waits in the sockets for the next round.
READ_CHUNK = 1 << 16
# Answer bytes a worker may leave unread before the committer closes its connection (the
# worker then applies its bodies itself); answers are ~100 bytes, so this is ~100k bodies.
ANSWERS_HELD = 16 << 20


def frame(meta: dict, body: bytes = b"") -> bytes:
    data = json.dumps(meta, separators=(",", ":")).encode()
    return FRAME.pack(len(data), len(body)) + data + body


def job_frame(job: Job) -> bytes:
    sig = job.signature
    return frame(
        {
            "e": job.endpoint,
            "c": job.content_type,
            "h": job.headers,
            "a": job.remote_addr,
            "s": [sig.sign, sig.access_key, sig.ts] if sig is not None else None,
        },
        job.body,
    )


def job_of(meta: dict, body: bytes) -> Job:
    sig = meta.get("s")
    return Job(
        meta["e"],
        body,
        meta.get("c"),
        meta.get("h") or {},
        meta.get("a"),
        signature=replay.Signature(sig[0], sig[1], int(sig[2])) if sig else None,
    )


def frames(buf: bytearray) -> list[tuple[dict, bytes]]:
    """Take every whole frame from the front of `buf`."""
    out = []
    at = 0
    while len(buf) - at >= FRAME.size:
        meta_len, body_len = FRAME.unpack_from(buf, at)
        end = at + FRAME.size + meta_len + body_len
        if len(buf) < end:
            break
        start = at + FRAME.size
        out.append(
            (json.loads(bytes(buf[start : start + meta_len])), bytes(buf[start + meta_len : end]))
        )
        at = end
    del buf[:at]
    return out


class Outgoing:
    """Frames waiting to be written to a socket that is not blocking: what the peer has not
    read yet stays here, and is written when the socket can take more."""

    # Buffers handed to one sendmsg (the kernel takes at most IOV_MAX, 1024 on Linux).
    PARTS = 256

    def __init__(self) -> None:
        self.parts: collections.deque[bytes] = collections.deque()
        self.size = 0  # bytes not yet written
        self.offset = 0  # of the first part, written already

    def __bool__(self) -> bool:
        return self.size > 0

    def add(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)

    def clear(self) -> None:
        self.parts.clear()
        self.size = self.offset = 0

    def flush(self, sock: socket.socket) -> bool:
        """Write what the socket takes now; True when nothing is left. Raises OSError when the
        connection is gone."""
        parts = self.parts
        while parts:
            views = [memoryview(parts[0])[self.offset :]]
            views += [parts[i] for i in range(1, min(len(parts), self.PARTS))]
            try:
                sent = sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                return False
            self.size -= sent
            sent += self.offset
            while parts and sent >= len(parts[0]):
                sent -= len(parts.popleft())
            self.offset = sent
        self.offset = 0
        return True


# --- the worker's side -------------------------------------------------------------------------

_local = threading.local()


def connect(path: str, timeout: float | None) -> socket.socket | None:
    """A connection to the committer whose sends and receives fail past `timeout`, or (None)
    never wait at all; None when there is no committer to connect to, or (not waiting) when
    it is not accepting connections."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if timeout is None:
        sock.setblocking(False)
        try:
            sock.connect(path)  # a Unix socket connects at once, or fails (EAGAIN: backlog full)
        except OSError:
            sock.close()
            return None
        return sock
    try:
        sock.connect(path)
        # The kernel keeps the time limit (a read or write past it fails with EAGAIN), so each
        # send and receive is one system call, not a poll first as with Python's timeout.
        limit = struct.pack("ll", int(timeout), int(timeout % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    except OSError:
        sock.close()
        return None
    return sock


def _connection(path: str, timeout: float) -> socket.socket | None:
    sock = getattr(_local, "sock", None)
    if sock is not None and getattr(_local, "pid", None) == os.getpid():
        return sock
    sock = connect(path, timeout)
    if sock is not None:
        _local.sock, _local.pid = sock, os.getpid()
    return sock


def _forget() -> None:
    sock = getattr(_local, "sock", None)
    _local.sock = None
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _answer(sock: socket.socket) -> dict:
    """One answer frame (usually one read)."""
    buf = bytearray()
    while not (got := frames(buf)):
        chunk = sock.recv(READ_CHUNK)
        if not chunk:
            raise ConnectionError("the committer closed the connection")
        buf += chunk
    return got[0][0]


def submit(path: str, job: Job, timeout: float) -> Result | None:
    """Hand a body to the committer and wait for its answer; None when it was not handed over
    (no committer to take it): the caller applies it itself."""
    sock = _connection(path, timeout)
    if sock is None:
        return None
    try:
        sock.sendall(job_frame(job))
    except OSError:
        # Not taken whole: the committer drops a frame cut short with its connection.
        _forget()
        return None
    try:
        meta = _answer(sock)
    except BlockingIOError:  # no answer within the time limit (SO_RCVTIMEO)
        _forget()
        return unavailable(NOT_IN_TIME)
    except (OSError, ValueError):
        # The committer ended after taking the body and before answering: it answers every
        # body it has read before it stops, so only one killed could have applied it. The
        # body is applied here; a second copy would be a duplicate of the first.
        _forget()
        return None
    return Result(**meta)


# --- the committer ------------------------------------------------------------------------------


class Committer:
    def __init__(self, app: Flask, path: str):
        self.app = app
        self.path = path
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[socket.socket, bytearray] = {}
        # Answers a worker has not read yet: the committer never waits on a worker.
        self.outgoing: dict[socket.socket, Outgoing] = {}

    def listen(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        listener.listen(1024)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            self.buffers[sock] = bytearray()
            self.outgoing[sock] = Outgoing()
            self.selector.register(sock, selectors.EVENT_READ, sock)

    def _close(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        self.buffers.pop(sock, None)
        self.outgoing.pop(sock, None)
        sock.close()

    def _flush(self, sock: socket.socket) -> None:
        """Write a worker's answers as far as it reads them; the rest waits for the socket to
        be writable (a stopped worker holds up no other)."""
        out = self.outgoing[sock]
        try:
            done = out.flush(sock)
        except OSError:
            self._close(sock)
            return
        if not done and out.size > ANSWERS_HELD:
            log.error(
                "a worker has not read %d bytes of answers; its connection is closed", out.size
            )
            self._close(sock)
            return
        events = selectors.EVENT_READ | (0 if done else selectors.EVENT_WRITE)
        if self.selector.get_key(sock).events != events:
            self.selector.modify(sock, events, sock)

    def _read(self, sock: socket.socket) -> list[tuple[dict, bytes]]:
        buf = self.buffers[sock]
        while True:
            try:
                chunk = sock.recv(READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._close(sock)  # a frame cut short is dropped: its sender applies it
                break
            buf += chunk
            if len(chunk) < READ_CHUNK:  # all there was: what comes later wakes select again
                break
        try:
            return frames(buf)
        except (ValueError, KeyError):
            log.error("a worker sent a frame that is not one; its connection is closed")
            if sock.fileno() >= 0:
                self._close(sock)
            return []

    def round(self, timeout: float) -> int:
        """Read what every worker has sent, apply it in one batch, answer. The bodies taken."""
        taken: list[tuple[socket.socket, Job]] = []
        for key, events in self.selector.select(timeout):
            if key.data is None:
                self._accept(key.fileobj)
                continue
            sock = key.data
            if events & selectors.EVENT_WRITE and sock in self.outgoing:
                self._flush(sock)
            if events & selectors.EVENT_READ and sock in self.buffers:
                taken += [(sock, job_of(meta, body)) for meta, body in self._read(sock)]
        if not taken:
            return 0
        jobs = [job for _, job in taken]
        for job in jobs:  # in the order they were read: arrival order and times agree
            stamp_arrival(job)
        try:
            writer_of(self.app).apply(jobs, self.link)
        except Exception:  # each body has its answer all the same, sent below
            log.exception("the ingest committer failed to apply a batch")
        answers: dict[socket.socket, list[bytes]] = {}
        for sock, job in taken:
            # The Result's own fields (JSON values): no copy of them as asdict would make.
            answers.setdefault(sock, []).append(frame(vars(job.result)))
        for sock, parts in answers.items():
            if sock not in self.outgoing:  # closed meanwhile: its sender applies its bodies
                continue
            self.outgoing[sock].add(b"".join(parts))
            self._flush(sock)
        return len(jobs)

    def run(self) -> None:
        parent = os.getppid()
        with self.app.app_context():
            self.link = Link()
            try:
                while not self.stopping:
                    try:
                        self.round(1.0)
                        # A spool left by a process that ended (another committer, a worker).
                        writer_of(self.app).ensure_draining()
                    except Exception:  # answered already, or applied by their senders
                        log.exception("an ingest committer round failed")
                    if os.getppid() != parent:  # the master ended without stopping us
                        break
            finally:
                self.link.drop()
                writer_of(self.app).stop()
                for sock in list(self.buffers):
                    self._close(sock)
                try:
                    os.unlink(self.path)
                except OSError:
                    pass


def is_committer(pid: int) -> bool:
    """Whether a process is a committer started by `Supervisor`."""
    try:
        return MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def address() -> str | None:
    """The committer's socket in a worker of a server that has one."""
    return os.environ.get(SOCKET_ENV) or None


# --- the master's side (gunicorn.conf.py) -------------------------------------------------------


class Supervisor:
    """Starts the committer before the workers, starts it again if it ends, stops it after
    the workers have stopped."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="viberwatch-ingest-")
        self.path = os.path.join(self.folder, "committer.sock")
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, seconds: float = 60.0) -> None:
        """Start the committer and wait (up to `seconds`) until it listens; the workers it
        serves are told its address through the environment they inherit."""
        os.environ[SOCKET_ENV] = self.path
        self._spawn(seconds)
        self._watcher = threading.Thread(target=self._watch, name="committer-watch", daemon=True)
        self._watcher.start()

    def _spawn(self, seconds: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", MODULE, self.path])
        deadline = time.monotonic() + seconds
        while not os.path.exists(self.path) and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return
            time.sleep(0.05)

    def _watch(self) -> None:
        while not self.stopping.is_set():
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            log.error("the ingest committer ended (exit status %s); starting it again", code)
            # Meanwhile the workers apply the bodies themselves.
            if self.stopping.wait(1.0):
                return
            self._spawn(60.0)

    def stop(self, seconds: float) -> int | None:
        """Stop the committer (it answers the bodies it has read first); its pid."""
        self.stopping.set()
        proc = self.proc
        if proc is None:
            return None
        proc.terminate()
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        return proc.pid


def main(path: str) -> None:
    os.environ.pop(SOCKET_ENV, None)  # the committer applies, it does not hand over
    from .. import create_app

    app = create_app()
    committer = Committer(app, path)
    committer.listen()

    def stop(_signum, _frame):
        committer.stopping = True

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C reaches the whole process group: the master stops us after its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("ingest committer ready on %s", path)
    committer.run()


if __name__ == "__main__":
    main(sys.argv[1])
