"""The committer process: reads every body that has arrived from any worker, applies them in
one batch through this process's writer (spooling while the database is away), answers each,
reads again. Started by the gunicorn master (supervisor.py) as `viberwatch ingest-committer`."""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket

from flask import Flask

from ..jobs import Job, stamp_arrival
from ..transaction import Link
from ..writer import writer_of
from .protocol import ANSWERS_HELD, READ_CHUNK, Outgoing, frame, frames, job_of

log = logging.getLogger(__name__)


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
                        writer_of(self.app).spooler.ensure_draining()
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


def serve(app: Flask, path: str) -> None:
    """Listen on `path` and commit until told to stop (SIGTERM) or the master ends."""
    committer = Committer(app, path)
    committer.listen()

    def stop(_signum, _frame):
        committer.stopping = True

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C reaches the whole process group: the master stops us after its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("ingest committer ready on %s", path)
    committer.run()
