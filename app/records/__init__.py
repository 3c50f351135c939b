"""The message record: the tables (models), the ingest writer that keeps every body and
applies it in batches (ingest, with sqlutil for the dialects and spool for the disk while
the database is away), what a body says about its message (derivation), the counters and
rollups kept beside the messages (tally, rollup), contacts, webhook replay protection
(replay) and how long never-applied bodies are kept (retention)."""

from flask import Flask

from . import ingest, retention


def init_app(app: Flask) -> None:
    retention.init_app(app)
    ingest.init_app(app)
