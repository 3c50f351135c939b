"""Live updates over WebSockets: the socket endpoint (views), one hub per process that tails
the activity log and fans it out (hub), what each page is pushed (push), and the wake-up
between processes through Redis, PostgreSQL or the SQLite file (wake)."""

from flask import Flask

from . import views


def init_app(app: Flask) -> None:
    views.init_app(app)
