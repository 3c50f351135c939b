"""The ingest writer of one process: a request hands its body over (`ingest`) and waits; a
thread takes every body waiting at that moment (up to INGEST_BATCH_MAX) and applies them
together in one transaction (transaction.apply_batch), or while the database is away appends
them to the spool (spool.Spooler). Under the production command the bodies go to the server's
committer instead (a `hand_over` given by ingest.init_app), and this writer applies only what
the committer could not take.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from flask import Flask, current_app

from ..core.services import services
from ..core.signing import Signature
from ..records.models import db
from .jobs import NOT_IN_TIME, Job, Result, new_job, stamp_arrival, unavailable
from .spool import Spooler
from .transaction import Link, activity_answered, apply_batch

log = logging.getLogger(__name__)

# A writer thread with nothing to do for this long ends; the next body starts another.
IDLE_SECONDS = 30.0

# Hands bodies to another process and waits (at most the given seconds) for their answers;
# None for each not handed over (the caller applies it itself).
HandOver = Callable[[list[Job], float], list[Result | None]]


class Writer:
    """The ingest writer of one process (see the module docstring)."""

    def __init__(self, app: Flask, folder: Path, hand_over: HandOver | None = None):
        self.app = app
        self.max_batch = max(1, app.config["INGEST_BATCH_MAX"])
        self.wait_seconds = app.config["INGEST_WAIT_TIMEOUT"]
        self.spooler = Spooler(app, folder, self.max_batch, app.config["SPOOL_RETRY_SECONDS"])
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pid = os.getpid()
        self._hand_over = hand_over
        # Bodies whose sender does not wait for them (submit_later), and their thread.
        self._later: list[Job] = []
        self._later_cond = threading.Condition()
        self._later_thread: threading.Thread | None = None

    @property
    def folder(self) -> Path:
        return self.spooler.folder

    @property
    def cannot_store(self) -> bool:
        """The last bodies could be neither applied nor spooled (answered 503)."""
        return self.spooler.cannot_store

    def submit(self, job: Job) -> Result:
        """Hand a body over and wait for its answer."""
        return self.submit_many([job])[0]

    def submit_many(self, jobs: list[Job]) -> list[Result]:
        """Hand bodies over at once (they keep their order) and wait for their answers."""
        results: list[Result | None] = [None] * len(jobs)
        if self._hand_over is not None:
            fresh = [i for i, job in enumerate(jobs) if job.received_at is None]
            for i, result in zip(
                fresh, self._hand_over([jobs[i] for i in fresh], self.wait_seconds), strict=True
            ):
                if result is not None:
                    answered(self.app, result)
                    results[i] = result
        local = [job for job, result in zip(jobs, results, strict=True) if result is None]
        if local:
            with self._cond:
                if self._pid != os.getpid():  # a fork inherited this object, not its threads
                    self._pid, self._pending, self._thread = os.getpid(), [], None
                    self.spooler.forget_after_fork()
                for job in local:
                    if job.received_at is None:
                        # Taken under the lock, so arrival order and received times agree.
                        stamp_arrival(job)
                self._pending.extend(local)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="ingest-writer", daemon=True
                    )
                    self._thread.start()
                self._cond.notify()
            deadline = time.monotonic() + self.wait_seconds
            for i, job in enumerate(jobs):
                if results[i] is None:
                    done = job.done.wait(max(0.0, deadline - time.monotonic()))
                    results[i] = job.result if done else unavailable(NOT_IN_TIME)
        return results

    def submit_later(self, job: Job) -> None:
        """Hand a body over without waiting for it: a thread of this process hands over what
        has gathered and waits for the answers (the send proxy's registrations: the sender
        waits for NXCLOUD, not for the record)."""
        with self._later_cond:
            if self._pid != os.getpid():
                self._later, self._later_thread = [], None
            self._later.append(job)
            if self._later_thread is None:
                self._later_thread = threading.Thread(
                    target=self._hand_over_later, name="ingest-later", daemon=True
                )
                self._later_thread.start()
            self._later_cond.notify()

    def _hand_over_later(self) -> None:
        while True:
            with self._later_cond:
                while not self._later and not self._stopping:
                    if not self._later_cond.wait(IDLE_SECONDS):
                        break
                if not self._later:
                    self._later_thread = None
                    return
                jobs, self._later = self._later[: self.max_batch], self._later[self.max_batch :]
            with self.app.app_context():
                for job, result in zip(jobs, self.submit_many(jobs), strict=True):
                    if not result.ok:
                        log.warning(
                            "a %s body handed over later was answered %s (%s)",
                            job.endpoint,
                            result.http_status,
                            (result.error or {}).get("error"),
                        )

    def waiting(self) -> int:
        """Bodies handed over and not yet taken into a batch."""
        with self._cond:
            return len(self._pending)

    def _take(self) -> list[Job]:
        with self._cond:
            while not self._pending and not self._stopping:
                if not self._cond.wait(IDLE_SECONDS):
                    break
            if not self._pending:
                self._thread = None
                return []
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            return batch

    def _run(self) -> None:
        with self.app.app_context():
            link = Link()
            try:
                while True:
                    batch = self._take()
                    if not batch:
                        return
                    self.apply(batch, link)
            finally:
                link.drop()
                with self._cond:
                    if self._thread is threading.current_thread():
                        self._thread = None

    def apply(self, jobs: list[Job], link: Link) -> None:
        """Apply (or spool) these bodies, at most INGEST_BATCH_MAX to a transaction; every one
        is answered, even if this raises."""
        try:
            for start in range(0, len(jobs), self.max_batch):
                self._handle(jobs[start : start + self.max_batch], link)
        finally:
            for job in jobs:
                if not job.done.is_set():
                    job.finish(unavailable("not applied: the writer failed"))
            db.session.remove()

    def _handle(self, batch: list[Job], link: Link) -> None:
        spooler = self.spooler
        while True:
            if not spooler.active:
                if apply_batch(batch, link):
                    spooler.cannot_store = False
                    return
                batch = [job for job in batch if not job.done.is_set()]
                if spooler.append(batch, start=True):
                    return
            elif spooler.append(batch, start=False):
                return
            # The drainer emptied the spool in between: the database is back.

    def stop(self, timeout: float = 30.0) -> None:
        """Apply (or spool) what is waiting, then end the threads (a process about to exit)."""
        with self._later_cond:
            later = self._later_thread
            self._stopping = True
            self._later_cond.notify_all()
        if later is not None:  # first: what it hands over may go to this process's writer
            later.join(timeout)
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        self.spooler.stop(timeout)
        with self._cond:
            self._stopping = False


def answered(app: Flask, result: Result) -> None:
    """A body this process handed to the server's committer was answered: an accepted one
    wakes this process's live tailer (the committer has published it to the others)."""
    if result.outcome == "accepted":
        activity_answered.send(app)


def writer_of(app: Flask) -> Writer:
    return services(app).writer


def ingest(
    endpoint: str,
    body: bytes,
    content_type: str | None,
    headers,
    remote_addr: str | None = None,
    *,
    received_at: datetime | None = None,
    signature: Signature | None = None,
) -> Result:
    """Store a body verbatim and apply it; answered once both are committed. A `signature`
    (verified) is taken in the same transaction: used before, the body is refused as a replay."""
    return ingest_job(
        new_job(endpoint, body, content_type, headers, remote_addr, received_at, signature)
    )


def ingest_job(job: Job) -> Result:
    """`ingest` of a job made already (the webhook pipeline's)."""
    result = writer_of(current_app._get_current_object()).submit(job)
    # Committed by the writer's session: objects this thread's session loaded are stale now.
    if db.session.registry.has():
        db.session.expire_all()
    return result
