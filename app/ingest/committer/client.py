"""The worker's side of the committer: hand a body over on this thread's connection and wait
for its answer (the request threads; the event loop has its own connection, app/server/loop.py)."""

from __future__ import annotations

import os
import socket
import struct
import threading

from ..jobs import NOT_IN_TIME, Job, Result, unavailable
from .protocol import READ_CHUNK, frames, job_frame

# The socket's path, set by the master (supervisor.py) for its workers.
SOCKET_ENV = "VIBERWATCH_INGEST_SOCKET"


def address() -> str | None:
    """The committer's socket in a worker of a server that has one."""
    return os.environ.get(SOCKET_ENV) or None


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


def submit(path: str, job: Job, timeout: float) -> Result | None:
    """Hand a body to the committer and wait for its answer; None when it was not handed over
    (no committer to take it): the caller applies it itself."""
    return submit_many(path, [job], timeout)[0]


def submit_many(path: str, jobs: list[Job], timeout: float) -> list[Result | None]:
    """Hand bodies to the committer at once and wait for their answers, in order; None for
    each not handed over (the caller applies it itself)."""
    sock = _connection(path, timeout)
    if sock is None:
        return [None] * len(jobs)
    try:
        sock.sendall(b"".join(job_frame(job) for job in jobs))
    except OSError:
        # Not taken whole: the committer drops a frame cut short with its connection.
        _forget()
        return [None] * len(jobs)
    results: list[Result | None] = []
    buf = bytearray()
    try:
        while len(results) < len(jobs):
            got = frames(buf)
            if got:
                results += [Result(**meta) for meta, _ in got]
                continue
            chunk = sock.recv(READ_CHUNK)
            if not chunk:
                raise ConnectionError("the committer closed the connection")
            buf += chunk
    except BlockingIOError:  # no answer within the time limit (SO_RCVTIMEO)
        _forget()
        return results + [unavailable(NOT_IN_TIME)] * (len(jobs) - len(results))
    except (OSError, ValueError, TypeError):
        # The committer ended after taking the bodies and before answering: it answers every
        # body it has read before it stops, so only one killed could have applied them. The
        # rest are applied here; a second copy would be a duplicate of the first.
        _forget()
        return results + [None] * (len(jobs) - len(results))
    return results[: len(jobs)]
