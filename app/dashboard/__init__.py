"""The operators' pages: the message list and the rejected bodies (views), conversations,
the CSV export, and what they share: filters, keyset-paged listing with its counters, and
the queries behind a message's page."""

from flask import Flask

from . import conversations, export, views


def init_app(app: Flask) -> None:
    views.register(app)
    app.register_blueprint(conversations.bp)
    app.register_blueprint(export.bp)
