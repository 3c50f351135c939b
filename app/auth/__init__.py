"""Who may do what: the security every request passes through first (CSRF, trusted
proxies, security headers, the secret key and the instance folder's permissions: security),
operators and their passwords (users), sign-ins (sessions), the limits on sign-in attempts
(throttle), API tokens (tokens), the sign-in pages (views), the login requirement and the
role or scope each endpoint needs (guard, roles), the audit log (audit), the user's own
account page (account), and their commands (cli)."""

from argon2 import PasswordHasher
from flask import Flask
from flask_login import current_user

from ..core.services import services
from . import account, cli, guard, roles, security, views
from .sessions import login_manager
from .throttle import PasswordChecks


def init_app(app: Flask) -> None:
    # Before every other hook and blueprint: nothing is reachable without authentication.
    security.init_app(app)
    registry = services(app)
    registry.password_checks = PasswordChecks(app.config["LOGIN_CONCURRENT_CHECKS"])
    registry.hasher = PasswordHasher(
        time_cost=app.config["ARGON2_TIME_COST"],
        memory_cost=app.config["ARGON2_MEMORY_COST"],
        parallelism=app.config["ARGON2_PARALLELISM"],
    )
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    app.register_blueprint(views.bp)
    app.register_blueprint(account.bp)
    # Templates ask before showing a control: {% if allowed('export.export_csv') %}.
    app.add_template_global(lambda endpoint: roles.allowed(current_user, endpoint), "allowed")
    app.before_request(guard.require_login)
    cli.register(app)
