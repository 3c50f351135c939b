"""The ingest engine: every body that reaches the app, kept and applied.

    jobs         a body handed over and its answer; validation (no database)
    stored       what a batch reads of the messages it touches
    batch        one batch inside a transaction: decide, write
    transaction  the transaction around a batch, its lock and connection, the database away
    writer       a process's writer thread (group commit), and `ingest`, what views call
    spool        while the database is away: the spool and its drainer (spoolfile: the format)
    committer/   one process that applies the bodies of every gunicorn worker (protocol,
                 client, server, supervisor)

It uses the record (records) and core; the areas above use it.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import click
from flask import Flask

from ..core.services import services
from . import spoolfile
from .committer import client, server, supervisor
from .jobs import NOT_IN_TIME, Job, Result, new_job, stamp_arrival, unavailable
from .spool import drain, drain_file
from .transaction import (
    CHECKPOINT_EVERY,
    Link,
    activity_answered,
    activity_committed,
    apply_batch,
    batch_committed,
    refuse,
    store_raw,
    write_lock,
)
from .writer import Writer, answered, ingest, ingest_job, writer_of

# What the areas above use (the rest is the package's own).
__all__ = [
    "CHECKPOINT_EVERY",
    "NOT_IN_TIME",
    "Job",
    "Link",
    "Result",
    "activity_answered",
    "activity_committed",
    "answered",
    "apply_batch",
    "batch_committed",
    "drain",
    "drain_file",
    "ingest",
    "ingest_job",
    "init_app",
    "new_job",
    "refuse",
    "stamp_arrival",
    "stop",
    "store_raw",
    "unavailable",
    "write_lock",
    "writer_of",
]

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    folder = Path(app.config["SPOOL_FOLDER"] or os.path.join(app.instance_path, "spool"))
    # Under the production command the bodies go to the server's committer process.
    path = client.address()
    hand_over = partial(client.submit_many, path) if path else None
    writer = services(app).writer = Writer(app, folder, hand_over)
    try:
        # At start: a folder others may write into is closed, or (not ours) refused.
        spoolfile.ensure(folder)
    except spoolfile.SpoolError:
        raise
    except OSError as exc:  # not there to be made: bodies are answered 503 if it is needed
        logging.getLogger("viberwatch.spool").error(
            "the spool folder %s cannot be made (%s)", folder, exc
        )

    @app.context_processor
    def spool_banner():
        return {"spool_waiting": writer.spooler.status}

    @app.cli.command(supervisor.COMMAND, hidden=True)
    @click.argument("path")
    def ingest_committer(path: str):
        """The server's ingest committer, on the Unix socket `path` (gunicorn's master runs it)."""
        server.serve(app, path)

    @app.before_request
    def drain_what_was_left():
        # A spool left by a process that ended is drained by the first live one to notice.
        try:
            writer.spooler.ensure_draining()
        except OSError:
            log.exception("the spool folder cannot be read")


def stop(app: Flask) -> None:
    writer = services(app).writer
    if writer is not None:
        writer.stop()
