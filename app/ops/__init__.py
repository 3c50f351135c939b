"""Looking after the record from the command line: seeding test data (seed), purging old
messages, recounting the counters and rollups (maintenance), recomputing every message from
the raw bodies (rebuild), and the commands for these and for reprocessing and the spool
(cli)."""

from flask import Flask

from . import cli


def init_app(app: Flask) -> None:
    cli.register(app)
