"""The campaigns pages: every figure per tag over a range of days (report, from the rollups
per tag), a campaign's funnel over time, and two campaigns (or one over two ranges) side by
side; and their views."""

from flask import Flask

from . import views


def init_app(app: Flask) -> None:
    views.register(app)
