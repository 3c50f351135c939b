"""The administrator's pages: users, API tokens and the audit log (views)."""

from flask import Flask

from . import views


def init_app(app: Flask) -> None:
    app.register_blueprint(views.bp)
