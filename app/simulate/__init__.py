"""`viberwatch simulate`: a script of synthetic messages (script) played against a running
viberwatch as NXCLOUD would (run), with a stand-in for NXCLOUD's send API (send_api)."""

from flask import Flask

from . import run


def init_app(app: Flask) -> None:
    app.cli.add_command(run.simulate_command)
