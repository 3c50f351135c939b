"""What arrives from outside: NXCLOUD's webhooks (views), their authentication (token,
signature, allowed networks: auth), and the JSON API that registers and reads messages
(api)."""

from flask import Flask

from . import api, auth, views


def init_app(app: Flask) -> None:
    auth.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
