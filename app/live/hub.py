"""The live hub of one process: a tailer thread reads the activity log from a cursor and
hands each batch to the sockets of this process.

The tailer never writes to a socket. Each socket has a bounded queue of batches, drained
by its own handler thread, which renders and sends; a slow or dead socket therefore
delays nobody else, and one that falls too far behind is closed so that its page
reconnects and catches up from the database with its cursor.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from flask import Flask

from ..auth.sessions import open_sessions, sessions_ended
from ..core.services import services
from ..ingest import activity_answered, activity_committed
from ..records.models import Activity, db
from . import wake as live_wake
from .push import Event, Page, PushBatch

log = logging.getLogger(__name__)


def head_id() -> int:
    """The newest activity id (0 when the log is empty)."""
    return db.session.execute(db.select(db.func.max(Activity.id))).scalar() or 0


def read_events(after: int, upto: int | None = None, limit: int = 1000) -> list[Event]:
    stmt = db.select(Activity).where(Activity.id > after).order_by(Activity.id).limit(limit)
    if upto is not None:
        stmt = stmt.where(Activity.id <= upto)
    return [Event.of(a) for a in db.session.execute(stmt).scalars()]


@dataclass(eq=False)
class Client:
    """One open socket: its page, its cursor and the batches waiting to be sent to it."""

    page: Page
    cursor: int
    max_batches: int
    session: str | None = None  # the sign-in it was opened by (UserSession id)
    batches: list[PushBatch] = field(default_factory=list)
    catching_up: bool = True
    overflow: bool = False
    closed: bool = False
    signed_out: bool = False
    wake: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def offer(self, batch: PushBatch) -> None:
        """Queue a batch (called by the tailer, never blocks on the socket)."""
        with self.lock:
            if self.overflow or self.closed:
                return
            if len(self.batches) >= self.max_batches:
                # Too far behind: the page reconnects and catches up from the database.
                self.overflow = True
                self.batches.clear()
            else:
                self.batches.append(batch)
        self.wake.set()

    def take(self) -> list[PushBatch]:
        with self.lock:
            taken, self.batches = self.batches, []
        return taken


class Hub:
    """Per-process fan-out of the activity log; created on the first socket."""

    def __init__(self, app: Flask):
        self.app = app
        cfg = app.config
        self.poll_interval = cfg["LIVE_POLL_INTERVAL"]
        self.gap_wait = cfg["LIVE_GAP_WAIT"]
        self.max_batches = cfg["LIVE_QUEUE_BATCHES"]
        self.session_interval = cfg["LIVE_SESSION_CHECK_INTERVAL"]
        self._next_session_check = 0.0
        self._sessions_due = False
        self.lock = threading.Lock()
        self.clients: set[Client] = set()
        self.cursor = 0
        self.started = False
        self.stopped = threading.Event()
        self.wakeup = threading.Event()
        self.backend: live_wake.Backend | None = None
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        # A missing id above the cursor: a transaction that has not committed yet (or
        # rolled back). Held back for gap_wait so that the cursor never skips an event.
        self._gap_since: float | None = None
        self._backend_pid: int | None = None
        self._backend_lock = threading.Lock()
        activity_committed.connect(self._on_commit, sender=app)
        activity_answered.connect(self._on_answer, sender=app)
        sessions_ended.connect(self._on_sessions_ended, sender=app)

    # -- wake-ups ---------------------------------------------------------------------
    def _on_commit(self, sender, **_):
        """After a commit of this process: wake our tailer, and tell the other processes
        (a process with no socket of its own still publishes)."""
        self.wakeup.set()
        backend = self._wake_backend()
        if backend is not None:
            backend.publish()

    def _on_answer(self, sender, **_):
        """The server's ingest committer applied a body for this process (and published it)."""
        self.wakeup.set()

    def _wake_backend(self) -> live_wake.Backend | None:
        if self._backend_pid != os.getpid():
            with self._backend_lock:
                if self._backend_pid != os.getpid():
                    # Created in the process that uses it: threads do not survive a fork.
                    self.stopped.clear()
                    url = self.app.config["SQLALCHEMY_DATABASE_URI"]
                    self.backend = live_wake.choose(
                        self.app.config, url, self.wake, self.stopped, busy=self._has_clients
                    )
                    if self.backend is not None:
                        self.backend.start_publisher()
                    self._backend_pid = os.getpid()
        return self.backend

    def wake(self) -> None:
        self.wakeup.set()

    def _has_clients(self) -> bool:
        return bool(self.clients)

    def _on_sessions_ended(self, sender, **_):
        self._sessions_due = True
        self.wakeup.set()

    # -- life cycle -------------------------------------------------------------------
    def _ensure_started(self) -> None:
        """Start the tailer and the wake-up listener; called with the hub lock held."""
        if self.started and self.pid == os.getpid():
            return
        # After a fork the threads of the parent are gone: start afresh.
        self.pid = os.getpid()
        self.started = True
        self.stopped.clear()
        with self.app.app_context():
            self.cursor = head_id()
            db.session.remove()
        backend = self._wake_backend()
        if backend is not None:
            backend.start_listener()
        self.thread = threading.Thread(target=self._run, name="live-tailer", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop the threads and close every socket so that pages reconnect elsewhere."""
        self.stopped.set()
        self.wakeup.set()
        with self.lock:
            clients = list(self.clients)
            self.started = False
            self._backend_pid = None
        for c in clients:
            c.closed = True
            c.wake.set()
        if self.thread is not None:
            self.thread.join(5)

    # -- sockets ----------------------------------------------------------------------
    def attach(
        self, page: Page, cursor: int | None, session: str | None = None
    ) -> tuple[Client, int]:
        """Register a socket; returns it and the id up to which the caller must catch up
        from the database (batches after that id arrive through the queue)."""
        with self.lock:
            self._ensure_started()
            upto = self.cursor
            client = Client(
                page=page,
                cursor=upto if cursor is None else cursor,
                max_batches=self.max_batches,
                session=session,
            )
            self.clients.add(client)
        return client, upto

    def detach(self, client: Client) -> None:
        client.closed = True
        with self.lock:
            self.clients.discard(client)

    def client_count(self) -> int:
        with self.lock:
            return len(self.clients)

    # -- the tailer -------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self.stopped.is_set():
            timeout = (
                self.poll_interval if self._gap_since is None else min(self.poll_interval, 0.02)
            )
            # Not past the next check of the sockets' sign-ins: it is due on time, not up to a
            # poll late.
            timeout = min(timeout, max(0.0, self._next_session_check - time.monotonic()))
            self.wakeup.wait(timeout)
            self.wakeup.clear()
            if self.stopped.is_set():
                break
            try:
                # A request context of its own, so that partials can build their links.
                with self.app.test_request_context("/"):
                    try:
                        self._drain()
                        self._check_sessions()
                    finally:
                        db.session.remove()
                failures = 0
            except Exception:
                failures += 1
                log.exception("live tailer pass failed")
                self.stopped.wait(min(5.0, 0.1 * 2**failures))

    def _drain(self) -> None:
        while True:
            rows = read_events(self.cursor)
            events = self._contiguous(rows)
            if not events:
                return
            with self.lock:
                pages = [c.page for c in self.clients]
            batch = None
            if pages:
                batch = PushBatch.load(events)
                batch.prepare(pages)
            with self.lock:
                for client in self.clients:
                    if batch is None:  # a socket arrived meanwhile; it renders what it needs
                        batch = PushBatch.load(events)
                    client.offer(batch)
                self.cursor = events[-1].id
            if len(events) < len(rows) or len(rows) < 1000:
                return

    def _check_sessions(self) -> None:
        """Mark the sockets whose sign-in has ended; their handlers close them."""
        now = time.monotonic()
        if not self._sessions_due and now < self._next_session_check:
            return
        self._sessions_due = False
        self._next_session_check = now + self.session_interval
        with self.lock:
            clients = [c for c in self.clients if c.session]
        alive = open_sessions({c.session for c in clients})
        for client in clients:
            if client.session not in alive:
                client.signed_out = True
                client.wake.set()

    def _contiguous(self, rows: list[Event]) -> list[Event]:
        """The rows that can be delivered without skipping an uncommitted id."""
        expected = self.cursor + 1
        for i, ev in enumerate(rows):
            if ev.id == expected:
                expected += 1
                continue
            now = time.monotonic()
            if self._gap_since is None:
                self._gap_since = now
            if now - self._gap_since < self.gap_wait:
                return rows[:i]
            # Waited long enough: the transaction that took the id rolled back.
            self._gap_since = None
            expected = ev.id + 1
        self._gap_since = None
        return rows


def hub_of(app: Flask) -> Hub:
    registry = services(app)
    if registry.live is None:
        with _create_lock:
            if registry.live is None:
                registry.live = Hub(app)
    return registry.live


_create_lock = threading.Lock()
