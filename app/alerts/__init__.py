"""Alerting: rules over the record and their measures (rules), and the notices they raise,
delivered to ALERT_URL with retries by a background thread, with their page and commands
(notices)."""

from flask import Flask

from . import notices


def init_app(app: Flask) -> None:
    notices.register(app)
