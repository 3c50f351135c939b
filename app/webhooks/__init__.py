"""What arrives from outside: NXCLOUD's webhooks (views, through the one webhook pipeline that
a worker's event loop shares: pipeline), their checks (token, signature, allowed networks:
checks), reprocessing of rejected and refused bodies (reprocess), and the JSON API that
registers and reads messages (api)."""

from flask import Flask

from . import api, checks, views


def init_app(app: Flask) -> None:
    checks.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
