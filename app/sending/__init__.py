"""Sending a text from a conversation: the reply box and the `send` command (views), the
rules and registration of a send (outbound), and NXCLOUD's send API client (nxcloud)."""

from flask import Flask

from . import views


def init_app(app: Flask) -> None:
    views.register(app)
