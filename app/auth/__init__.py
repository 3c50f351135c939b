"""Who may do what: the security every request passes through first (CSRF, trusted
proxies, security headers, the secret key and the instance folder's permissions: security),
users, sign-in, sessions and API tokens (accounts), and their commands (cli)."""

from flask import Flask

from . import accounts, cli, security


def init_app(app: Flask) -> None:
    # Before every other hook and blueprint: nothing is reachable without authentication.
    security.init_app(app)
    accounts.init_app(app)
    cli.register(app)
