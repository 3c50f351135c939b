"""Ingest transactions: a batch applied and committed in one transaction on the writer's
own connection (`Link`), behind a kernel lock on a SQLite file (`WriteLock`), each body then
answered; what tells the database being away (the bodies then go to the spool) from the
database refusing a body (kept as rejected, answered 503); and the signals sent after a commit.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, tzinfo

import psycopg
from blinker import Namespace
from flask import Flask, current_app
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from ..core.services import services
from ..core.times import utcnow
from ..records import retention
from ..records.models import RawBody, db
from ..records.sqlutil import begin_writing
from .batch import IngestBatch, bounded_text, write_marks
from .jobs import Job, kept_headers, parse, unavailable

log = logging.getLogger(__name__)

signals = Namespace()
# Sent after a commit that appended to the activity log; live updates listen to it.
activity_committed = signals.signal("activity-committed")
# Sent in a worker when the server's committer answers that it applied a body: the commit was
# another process's, this one's live updates are woken without publishing it again.
activity_answered = signals.signal("activity-answered")
# Sent after each ingest transaction, with the number of bodies it applied (for /metrics).
batch_committed = signals.signal("batch-committed")


def sendtime_zone() -> tzinfo:
    return services(current_app).sendtime_zone


class WriteLock:
    """On a SQLite file, a kernel lock (flock) held around each ingest transaction, so the
    writers of several processes queue in the kernel and the next one wakes the moment the
    last one commits, instead of sleeping through SQLite's busy timeout. A no-op elsewhere."""

    def __init__(self, app: Flask):
        self._threads = threading.Lock()
        self._path = None
        self._fd = None
        self._pid = None
        url = db.engines[None].url if app else None
        if (
            url is not None
            and url.get_backend_name() == "sqlite"
            and url.database not in (None, "", ":memory:")
        ):
            self._path = url.database + "-ingest.lock"

    @contextmanager
    def held(self):
        with self._threads:
            if self._path is None:
                yield
                return
            if self._fd is None or self._pid != os.getpid():
                self._fd, self._pid = (
                    os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600),
                    os.getpid(),
                )
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


def write_lock() -> WriteLock:
    registry = services(current_app)
    if registry.ingest_lock is None:
        registry.ingest_lock = WriteLock(current_app._get_current_object())
    return registry.ingest_lock


# On SQLite the writer checkpoints the write-ahead log itself, after every CHECKPOINT_EVERY
# commits and once its write lock is released: SQLite's automatic checkpoint runs inside a
# commit, and its fsync would hold up the writers of every other process.
CHECKPOINT_EVERY = 32


class Link:
    """The writer's own database connection, kept from one batch to the next (no pool
    checkout and liveness ping per batch); dropped after a failure, made again when needed."""

    def __init__(self) -> None:
        self._conn = None
        self._commits = 0

    def connection(self):
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = db.engine.connect()
            if (raw := self._sqlite()) is not None:
                raw.execute("PRAGMA wal_autocheckpoint = 0")
        return self._conn

    def _sqlite(self):
        """The driver's connection under the link when it is SQLite's, else None."""
        if self._conn is not None and self._conn.dialect.name == "sqlite":
            return self._conn.connection.dbapi_connection
        return None

    def committed(self) -> None:
        """Called after each commit, outside the write lock."""
        raw = self._sqlite()
        if raw is None:
            return
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            try:
                # PASSIVE: as far as it can without waiting for readers or writers.
                raw.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                log.debug("checkpointing the write-ahead log failed", exc_info=True)

    def drop(self) -> None:
        if self._conn is not None:
            try:
                raw = None if self._conn.invalidated else self._sqlite()
                if raw is not None:  # back to the pool as every other connection is
                    raw.execute("PRAGMA wal_autocheckpoint = 1000")
            except Exception:  # a connection that failed: it is closed below either way
                log.debug("resetting the writer's connection failed", exc_info=True)
            try:
                self._conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                log.debug("closing the writer's connection failed", exc_info=True)
            self._conn = None


@contextmanager
def _transaction(link: Link | None):
    """A connection in a transaction: the writer's own, or the current session's."""
    if link is None:
        try:
            yield db.session.connection()
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
        return
    conn = link.connection()
    transaction = conn.begin()
    try:
        yield conn
        transaction.commit()
    except BaseException:
        try:
            transaction.rollback()
        finally:
            link.drop()
        raise


def database_away(exc: BaseException) -> bool:
    """Whether an error says the database cannot take writes now (unreachable, shutting down,
    read-only, full, locked beyond the busy timeout, its file gone), rather than refusing
    this data: the bodies then wait in the spool instead of being answered 503."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(exc, (DisconnectionError, InterfaceError)) or isinstance(
        orig, sqlite3.InterfaceError
    ):
        return True
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return any(
            part in text
            for part in (
                "locked",
                "unable to open",
                "disk i/o",
                "disk is full",
                "readonly",
                "no such table",
            )
        )
    state = getattr(orig, "sqlstate", None)
    if isinstance(orig, psycopg.Error):
        # 08 connection, 53 resources (disk full), 57 operator intervention (shutdown),
        # 25006 read-only transaction (a standby); not 40 (deadlock: a retry will do).
        return (
            (state or "08").startswith(("08", "53", "57"))
            or state == "25006"
            or (isinstance(orig, psycopg.OperationalError) and state is None)
        )
    return isinstance(exc, OperationalError) and not isinstance(
        orig, (sqlite3.Error, psycopg.Error)
    )


def apply_batch(jobs: list[Job], link: Link | None = None) -> bool:
    """Store and apply these bodies in one transaction (on `link`, else on the current
    session) and finish each job with its own answer once committed.

    A batch whose transaction fails is applied again one body at a time, so one body the
    database refuses cannot sink the others; that body is still kept, answered 503. When the
    database cannot be reached at all, returns False and leaves the bodies not yet applied
    unanswered, for the spool. Never raises.
    """
    try:
        zone = sendtime_zone()
        for job in jobs:
            if job.received_at is None:
                job.received_at = utcnow()
        parsed = [parse(job, zone) for job in jobs]
        with write_lock().held(), _transaction(link) as conn:
            begin_writing(conn)
            logged = IngestBatch(parsed, zone, current_app.config["WEBHOOK_SIGN_WINDOW"]).run(conn)
    except Exception as exc:
        if database_away(exc):
            log.warning(
                "the database is away (%s)", type(getattr(exc, "orig", None) or exc).__name__
            )
            return False
        if len(jobs) > 1:
            log.warning(
                "a batch of %d bodies failed (%s); applying them one by one",
                len(jobs),
                type(exc).__name__,
            )
            return all(apply_batch([job], link) for job in jobs)
        return _keep_unapplied(jobs[0], exc)
    batch_committed.send(current_app._get_current_object(), bodies=len(jobs))
    never_applied = sum(len(p.job.body) for p in parsed if not p.result.ok and p.job.raw_id is None)
    if never_applied:
        # Bounded by REJECTED_KEEP_BYTES / _DAYS before anyone is answered.
        retention.kept(never_applied)
    for p in parsed:
        p.job.finish(p.result)
    if logged:
        activity_committed.send(current_app._get_current_object())
    if link is not None:
        link.committed()
    return True


def _keep_unapplied(job: Job, exc: Exception) -> bool:
    """The effect could not be committed (a constraint, a bug): keep the body on its own so
    `reprocess` can apply it later, and answer 503 so the sender retries. False when the
    database cannot be reached to keep it either."""
    reason = f"not applied: {type(exc).__name__}"
    log.error("ingest of a %s body failed", job.endpoint, exc_info=exc)
    if job.raw_id is not None:
        job.finish(unavailable(reason, job.raw_id))
        return True
    try:
        raw = store_raw(
            job.endpoint,
            job.body,
            job.content_type,
            job.headers,
            job.remote_addr,
            "rejected",
            503,
            reason,
            received_at=job.received_at,
            spooled=job.spooled,
        )
        write_marks(db.session.connection(), [job])
        db.session.commit()
        retention.kept(len(job.body))
    except Exception as again:
        db.session.rollback()
        if database_away(again):
            return False
        log.exception("a %s body could not be kept either", job.endpoint)
        job.finish(unavailable(f"{reason}; not kept"))
        return True
    job.finish(unavailable(reason, raw.id))
    return True


def store_raw(
    endpoint: str,
    body: bytes,
    content_type: str | None,
    headers: dict,
    remote_addr: str | None,
    outcome: str,
    http_status: int,
    reason: str | None = None,
    received_at: datetime | None = None,
    spooled: str | None = None,
) -> RawBody:
    raw = RawBody(
        endpoint=endpoint,
        received_at=received_at or utcnow(),
        content_type=bounded_text(content_type, 255),
        body=body,
        headers=json.dumps(kept_headers(headers)),
        remote_addr=bounded_text(remote_addr, 64),
        outcome=outcome,
        http_status=http_status,
        reason=reason,
        spooled=spooled,
    )
    db.session.add(raw)
    db.session.flush()
    return raw


def refuse(
    endpoint: str,
    body: bytes,
    content_type: str | None,
    headers: dict,
    remote_addr: str | None,
    http_status: int,
    reason: str,
) -> RawBody:
    """Keep a body whose request was refused before validation (authentication, size)."""
    raw = store_raw(
        endpoint, body, content_type, headers, remote_addr, "refused", http_status, reason
    )
    db.session.commit()
    retention.kept(len(body))
    return raw
