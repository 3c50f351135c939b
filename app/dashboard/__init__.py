"""The operators' pages: the message list and the rejected bodies (views), conversations,
the CSV export, text search (search), and what they share: the templates' filters and
globals (templating), rendered rows kept per process (rendered), the message filters
(filters), keyset-paged listing with its counters (listing), and the queries behind a
message's page (queries)."""

from flask import Flask

from . import conversations, export, rendered, search, templating, views


def init_app(app: Flask) -> None:
    templating.init_app(app)
    rendered.init_app(app)
    views.register(app)
    app.register_blueprint(conversations.bp)
    app.register_blueprint(export.bp)
    app.register_blueprint(search.bp)
