"""While the database is away: this process's spool (the file bodies go to, in the order they
arrived) and its drainer, the thread that applies the spool, and any spool left by a process
that ended, once the database answers again. The file format is spoolfile's.

Each body is applied exactly once: how far a file has been applied is kept in the database
(`spool_mark`), committed in the same transaction as the bodies themselves
(batch.write_marks), and every raw body applied from a spool names its record
(`raw_body.spooled`, "file:number").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path

from flask import Flask, current_app

from ..core.services import services
from ..core.signing import Signature
from ..records.models import SpoolMark, db
from . import spoolfile
from .jobs import Job, parse, queued, unavailable
from .transaction import Link, apply_batch, database_away, sendtime_zone

log = logging.getLogger(__name__)
# One line when spooling starts or fails, and when a spool is drained (app/observability/logs.py formats it).
spool_log = logging.getLogger("viberwatch.spool")

# Bytes the drainer may find appended behind it and still apply with appends held off, so
# that a steady flow of bodies, each spooled as the one before it is applied, ends.
CATCH_UP_BYTES = 256 * 1024


class Spooler:
    """This process's spool file while the database is away, and the drainer that applies it."""

    def __init__(self, app: Flask, folder: Path, batch_max: int, retry_seconds: float):
        self.app = app
        self.folder = folder
        self.batch_max = batch_max
        self.retry_seconds = retry_seconds
        # While set, every body goes to this file, so the spool keeps the order of arrival.
        # Set by the writer, cleared by the drainer, both under the lock; reentrant: the
        # drainer, catching up, applies the last bodies with appends held off.
        self._file: spoolfile.SpoolFile | None = None
        self._lock = threading.RLock()
        self._drainer: threading.Thread | None = None
        self._drainer_lock = threading.Lock()
        self._drainer_stop = threading.Event()
        # Set when a body is spooled: the drainer, waiting, looks again at once.
        self._wake = threading.Event()
        self._keys: spoolfile.Keys | None = None
        self._checked_at = 0.0
        # Set while the last bodies could be neither applied nor spooled (answered 503).
        self.cannot_store = False

    @property
    def keys(self) -> spoolfile.Keys:
        """The database this server's spool files belong to, and the key that signs them."""
        if self._keys is None:
            config = self.app.config
            self._keys = spoolfile.Keys.of(config["SQLALCHEMY_DATABASE_URI"], config["SECRET_KEY"])
        return self._keys

    @property
    def active(self) -> bool:
        """Bodies go to the spool (it holds bodies not yet applied)."""
        return self._file is not None

    def forget_after_fork(self) -> None:
        """A forked process inherited this object, not its file's lock or its threads."""
        self._file, self._drainer = None, None

    # --- writing ---------------------------------------------------------------------------

    def append(self, jobs: list[Job], *, start: bool) -> bool:
        """Spool the bodies, durably, and answer them; False when no spool is active and
        `start` does not ask for one."""
        zone = sendtime_zone()
        # Validated now (no database needed) so that each gets the answer it would get; all
        # are spooled, valid or not, and validated again when applied.
        parsed = [parse(job, zone) for job in jobs]
        with self._lock:
            if self._file is None and not start:
                return False
            try:
                started = self._file is None
                if self._file is not None and self._file.broken:
                    # A refused write could not be cut back: that file is left to be drained
                    # as one whose writer ended (its lock goes with it), and a new one starts.
                    self._file.close()
                    self._file = None
                if self._file is None:
                    self._file = spoolfile.SpoolFile(spoolfile.ensure(self.folder), self.keys)
                self._file.append(
                    [
                        (
                            j.endpoint,
                            j.received_at,
                            j.content_type,
                            j.headers,
                            j.remote_addr,
                            j.body,
                        )
                        for j in jobs
                    ]
                )
            except OSError as exc:
                spool_log.critical(
                    "the database is away and the spool cannot be written (%s): bodies "
                    "answered 503",
                    exc,
                    extra={"event": "spool_failed", "bodies": len(jobs)},
                )
                self.cannot_store = True
                for job in jobs:
                    job.finish(
                        unavailable(
                            "not applied: the database is away and the spool cannot be written"
                        )
                    )
                return True
            self.cannot_store = False
            if started:
                spool_log.warning(
                    "spooling started: the database is away; bodies wait on disk",
                    extra={
                        "event": "spool_started",
                        "spool": str(self._file.path),
                        "bodies": len(jobs),
                    },
                )
        for p in parsed:
            p.job.finish(p.result if p.result is not None else queued(p))
        self._wake.set()
        self.ensure_draining(force=True)
        return True

    def status(self) -> spoolfile.Status:
        """Bodies waiting in this server's spool files (every process's), read from disk."""
        if not self.folder.is_dir():
            return spoolfile.Status()
        return spoolfile.status(self.folder, self.keys)

    def writable(self) -> bool:
        try:
            return os.access(spoolfile.ensure(self.folder), os.W_OK)
        except OSError:
            return False

    # --- the drainer's view of its own file ------------------------------------------------

    @property
    def path(self) -> Path | None:
        current = self._file
        return current.path if current is not None else None

    def reader(self, keys: spoolfile.Keys, after: int) -> spoolfile.Reader:
        """A reader of the own file from where the last drain stopped, to the end of its whole
        records (the writer may be appending past them)."""
        with self._lock:
            current = self._file
            size, start = (current.size, current.drained_offset) if current else (0, 0)
        return spoolfile.Reader(current.path, keys, after, upto=size, start=start)

    def behind(self) -> int:
        """Bytes appended that the drainer has not applied yet."""
        with self._lock:
            current = self._file
            return current.size - current.drained_offset if current is not None else 0

    def held(self):
        """No body is appended while this is held (the drainer catching up)."""
        return self._lock

    def progress(self, drained: int, oldest: datetime | None, offset: int, damaged: int) -> None:
        """Bodies applied up to record `drained`, whose line ends at `offset`."""
        with self._lock:
            current = self._file
            if current is not None:
                current.drained, current.oldest = drained, oldest
                spoolfile.write_status(current.path, current.appended, drained, oldest)
        self.advance(offset, damaged)

    def advance(self, offset: int, damaged: int) -> None:
        """The own file read (and what there was to apply applied) up to `offset`, `damaged`
        lines of it skipped."""
        with self._lock:
            current = self._file
            if current is not None and offset > current.drained_offset:
                current.drained_offset = offset
                current.damaged_seen += damaged

    def finish_if_drained(self, drained: int, reader: spoolfile.Reader) -> bool:
        """Stop spooling when every body appended has been applied (under the lock the writer
        appends under, so none can slip in between)."""
        with self._lock:
            current = self._file
            # Every whole line read, damaged ones too: nothing more will come of it.
            if current is None or current.size != reader.consumed:
                return False
            current.close()
            self._file = None
            if reader.whole and not current.damaged_seen:
                spoolfile.remove(current.path)
                forget_mark(current.name)
            else:
                reader.damaged = current.damaged_seen
                spoolfile.keep_damaged(current.path, reader)
        spool_log.info(
            "spool drained: every body applied; back to writing directly",
            extra={"event": "spool_drained", "spool": str(current.path), "bodies": drained},
        )
        return True

    # --- draining --------------------------------------------------------------------------

    def ensure_draining(self, force: bool = False) -> None:
        """Start the drainer when this process spools, or (checked at most every
        SPOOL_RETRY_SECONDS) when a spool left by a process that ended is waiting."""
        now = time.monotonic()
        if not force and now - self._checked_at < max(self.retry_seconds, 1.0):
            return
        self._checked_at = now
        with self._drainer_lock:
            if self._drainer is not None and self._drainer.is_alive():
                return
            if not force:
                if not self.folder.is_dir():
                    return
                spoolfile.report_others(self.folder, self.keys)
                if not spoolfile.files(self.folder, self.keys):
                    return
            self._drainer_stop.clear()
            self._drainer = threading.Thread(
                target=self._drain_forever, name="ingest-drainer", daemon=True
            )
            self._drainer.start()

    def _drain_forever(self) -> None:
        with self.app.app_context():
            link = Link()
            try:
                while not self._drainer_stop.is_set():
                    self._wake.clear()
                    outcome = drain(self.folder, link, self.batch_max, own=self)
                    if outcome == "done" and self._file is None:
                        return
                    if outcome != "progress":
                        # Nothing to apply now (the database is away, or the own file has
                        # nothing new): wait for a new body or the next attempt, not spin.
                        self._wake.wait(self.retry_seconds)
            finally:
                link.drop()
                db.session.remove()

    def stop(self, timeout: float) -> None:
        """End the drainer (a process about to exit)."""
        with self._drainer_lock:
            drainer = self._drainer
        self._drainer_stop.set()
        self._wake.set()
        if drainer is not None:
            drainer.join(timeout)


def _mark_of(name: str) -> int:
    mark = db.session.execute(
        db.select(SpoolMark.drained_upto).where(SpoolMark.name == name)
    ).scalar()
    db.session.rollback()
    return mark or 0


def forget_mark(name: str) -> None:
    """After its file is gone (never before: the mark is what stops a second application)."""
    try:
        db.session.execute(db.delete(SpoolMark).where(SpoolMark.name == name))
        db.session.commit()
    except Exception:  # a leftover mark of a deleted file is harmless
        db.session.rollback()
        log.warning("the mark of spool %s stays (the database refused its deletion)", name)


def _spooler() -> Spooler:
    return services(current_app).writer.spooler


def drain(
    folder: Path,
    link: Link | None,
    batch_max: int,
    own: Spooler | None = None,
    keys: spoolfile.Keys | None = None,
) -> str:
    """Apply every spool file of this database in `folder` that is this process's own or
    whose process has ended, in order. "done" when nothing is left that can be drained now,
    "away" when the database stopped answering, "progress" when this process's own file
    received more meanwhile, "idle" when it is still being written and had nothing new."""
    if not folder.is_dir():
        return "done"
    keys = keys or _spooler().keys
    spoolfile.report_others(folder, keys)
    own_path = own.path if own is not None else None
    for path in spoolfile.files(folder, keys):
        mine = path == own_path
        fd = None if mine else spoolfile.claim(path)
        if not mine and fd is None:
            continue  # its process still runs and drains it
        try:
            reader = spoolfile.Reader(path, keys)
            outcome = _drain_file(path, reader, link, batch_max, own if mine else None)
        finally:
            if fd is not None:
                os.close(fd)
        if outcome != "done":
            return outcome
    return "done"


def drain_file(
    path: Path, batch_max: int, *, any_database: bool, unsigned: bool
) -> tuple[str, spoolfile.Reader]:
    """Apply one spool file named by an operator: one kept as damaged, one of this server
    reached under another address (`any_database`), or one an older version wrote without
    signatures (`unsigned`). "busy" while its process still runs; the reader tells what it
    took and skipped."""
    keys = _spooler().keys
    reader = spoolfile.Reader(path, keys, any_database=any_database, unsigned=unsigned)
    fd = spoolfile.claim(path)
    if fd is None:
        return "busy", reader
    try:
        return _drain_file(path, reader, None, batch_max, None), reader
    finally:
        os.close(fd)


def _drain_file(
    path: Path, reader: spoolfile.Reader, link: Link | None, batch_max: int, own: Spooler | None
) -> str:
    """Apply a file's records after its mark (`own`: this process's file, being written)."""
    name = spoolfile.name_of(path)
    try:
        after = _mark_of(name)
    except Exception as exc:
        db.session.rollback()
        if database_away(exc):
            return "away"
        raise
    if own is not None:
        reader = own.reader(reader.keys, after)
    reader.after = after
    outcome, total = _apply_records(path, reader, link, batch_max, own, after)
    if outcome != "done":
        return outcome
    if reader.foreign:
        return "done"  # its header names another database: left as it is (reported)
    if own is None:
        if reader.whole:
            spoolfile.remove(path)
            forget_mark(name)
            spool_log.info(
                "spool drained: it was left by a process that ended",
                extra={"event": "spool_drained", "spool": str(path), "bodies": total},
            )
        elif not path.name.endswith(spoolfile.DAMAGED_SUFFIX):
            spoolfile.keep_damaged(path, reader)
        return "done"
    if own.finish_if_drained(total, reader):
        return "done"
    if own.behind() > CATCH_UP_BYTES:
        return "progress" if reader.taken else "idle"
    # Bodies keep arriving, each spooled while the one before it is applied: the last few are
    # applied with appends held off (they wait a moment), then the writer goes direct again.
    with own.held():
        rest = own.reader(reader.keys, total)
        outcome, total = _apply_records(path, rest, link, batch_max, own, total)
        if outcome != "done":
            return outcome
        own.finish_if_drained(total, rest)
    return "done"


def _apply_records(
    path: Path,
    reader: spoolfile.Reader,
    link: Link | None,
    batch_max: int,
    own: Spooler | None,
    total: int,
) -> tuple[str, int]:
    """Apply what a reader hands out, in chunks; ("done" | "away", the last record's number)."""
    name = spoolfile.name_of(path)
    chunk: list[Job] = []
    signing = bool(current_app.config["WEBHOOK_SIGN_SECRET"])
    damaged = 0  # lines skipped up to the last record of the chunks applied
    for record in reader:
        chunk.append(
            Job(
                record.endpoint,
                record.body,
                record.content_type,
                record.headers,
                record.remote_addr,
                record.received_at,
                spooled=f"{name}:{record.n}",
                signature=Signature.of(record.headers) if signing else None,
            )
        )
        total = record.n
        if len(chunk) >= batch_max:
            if not _drain_chunk(path, chunk, link, own, reader.consumed, reader.damaged - damaged):
                return "away", total
            damaged, chunk = reader.damaged, []
    if chunk:
        if not _drain_chunk(path, chunk, link, own, reader.consumed, reader.damaged - damaged):
            return "away", total
    elif own is not None:
        # Lines read after the last record applied (damaged, or applied before): passed.
        own.advance(reader.consumed, reader.damaged - damaged)
    return "done", total


def _drain_chunk(
    path: Path, jobs: list[Job], link: Link | None, own: Spooler | None, offset: int, damaged: int
) -> bool:
    if not apply_batch(jobs, link):
        return False
    last = int(jobs[-1].spooled.rpartition(":")[2])
    # The bodies still waiting arrived after the last one applied.
    oldest = jobs[-1].received_at
    if own is not None:
        own.progress(last, oldest, offset, damaged)
    elif path.name.endswith(spoolfile.SUFFIX):
        spoolfile.mark_drained(path, last, oldest)
    return True
