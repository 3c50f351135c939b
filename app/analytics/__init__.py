"""The analytics page: rates, latencies, failures and replies over a time range (report),
from the messages or from the hourly and daily rollups (sql), and its views."""

from flask import Flask

from . import views


def init_app(app: Flask) -> None:
    views.register(app)
