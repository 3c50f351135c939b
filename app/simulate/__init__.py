"""`viberwatch simulate` (cli): a script of synthetic messages (script) played against a
running viberwatch as NXCLOUD would (run), with a stand-in for NXCLOUD's send API
(send_api)."""

from flask import Flask

from . import cli


def init_app(app: Flask) -> None:
    app.cli.add_command(cli.simulate_command)
