"""Sending: a text from a conversation (the reply box and the `send` command: views; the
rules and registration of a send: outbound), NXCLOUD's send API client (nxcloud), and the
pass-through send proxy a sending system points its NXCLOUD base URL at (proxy)."""

from flask import Flask

from . import proxy, views


def init_app(app: Flask) -> None:
    views.register(app)
    proxy.init_app(app)
