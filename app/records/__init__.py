"""The message record: the tables (models, with sqlutil for the dialects), what a body says
about its message (derivation), the counters and rollups kept beside the messages (tally,
rollup), contacts, webhook replay protection (replay) and how long never-applied bodies are
kept (retention). It imports only core; the ingest engine (app/ingest/) writes it."""

from flask import Flask

# search, append_only: importing them hooks the text search index and the audit record's
# UPDATE refusal to the tables' creation.
from . import append_only, retention, search  # noqa: F401


def init_app(app: Flask) -> None:
    retention.init_app(app)
