"""Commands for users, API tokens and the audit log: create-user, set-role, disable-user,
enable-user, set-password, logout-user, ensure-admin, the token commands, audit."""

from __future__ import annotations

from contextlib import contextmanager

import click
from flask import Flask

from . import audit, tokens, users
from .roles import ROLES, SCOPES, VIEWER

# Asked for (hidden, twice) unless given, which scripts do.
password_option = click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="For scripts; without it the password is asked for.",
)


@contextmanager
def account_errors():
    """A refused account change (AccountError) ends the command with its reason."""
    try:
        yield
    except users.AccountError as exc:
        raise click.ClickException(str(exc)) from None


role_option = click.option(
    "--role",
    type=click.Choice(ROLES),
    default=VIEWER,
    show_default=True,
    help="viewer: every page; operator: also export, send, reprocess; admin: also users, "
    "tokens, audit log.",
)


def register(app: Flask) -> None:
    @app.cli.command("create-user")
    @click.argument("name")
    @role_option
    @password_option
    def create_user(name: str, role: str, password: str):
        """Create a user who can sign in to the dashboard, with a role."""
        with account_errors():
            users.create_user(name, password, role)
        click.echo(f"user {name.strip()} created ({role})")

    @app.cli.command("set-role")
    @click.argument("name")
    @click.argument("role", type=click.Choice(ROLES))
    def set_role(name: str, role: str):
        """Change a user's role (the last admin keeps theirs)."""
        with account_errors():
            old = users.set_role(name, role)
        click.echo(f"{name}: {old} -> {role}" if old != role else f"{name} is already {role}")

    @app.cli.command("disable-user")
    @click.argument("name")
    def disable_user(name: str):
        """Disable a user: no sign-in, and their open sign-ins and dashboards end now."""
        with account_errors():
            ended = users.disable_user(name)
        click.echo(f"{name} disabled; {ended} sign-in{'s' if ended != 1 else ''} ended")

    @app.cli.command("enable-user")
    @click.argument("name")
    def enable_user(name: str):
        """Let a disabled user sign in again."""
        with account_errors():
            users.enable_user(name)
        click.echo(f"{name} enabled")

    @app.cli.command("audit")
    @click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
    @click.option("--user", "username", help="Only this user's records.")
    @click.option("--action", type=click.Choice(sorted(audit.ACTIONS)), help="Only this action.")
    def audit_command(limit: int, username: str | None, action: str | None):
        """Print the most recent audit records, newest first."""
        rows = audit.recent(limit, username=username, action=action)
        for line in audit.describe(rows):
            click.echo(line)
        if not rows:
            click.echo("no audit records")

    @app.cli.command("set-password")
    @click.argument("name")
    @password_option
    def set_password(name: str, password: str):
        """Change a user's password; their sign-ins end."""
        with account_errors():
            users.set_password(name, password)
        click.echo(f"password of {name} changed")

    @app.cli.command("logout-user")
    @click.argument("name")
    def logout_user(name: str):
        """End every sign-in of a user, on every browser (their open dashboards disconnect)."""
        with account_errors():
            ended = users.logout_everywhere(name)
        click.echo(f"{ended} sign-in{'s' if ended != 1 else ''} of {name} ended")

    @app.cli.command("ensure-admin")
    @click.option("--name", default="admin", show_default=True)
    def ensure_admin(name: str):
        """Create a first user with a random password if no user exists, and print it once."""
        password = users.ensure_admin(name)
        if password is None:
            names = users.user_names()
            who = name if name in names else names[0]
            click.echo(f"Users exist ({', '.join(names)}): sign in with one and its password.")
            click.echo(f"Forgotten? Set a new one with `viberwatch set-password {who}`.")
            return
        click.echo("No user existed, so one was created. Sign in with:")
        click.echo(f"  username: {name}")
        click.echo(f"  password: {password}")
        click.echo("This password is not shown again; change it with `viberwatch set-password`.")

    @app.cli.command("create-token")
    @click.argument("name")
    @click.option(
        "--scope",
        "scopes",
        multiple=True,
        type=click.Choice(SCOPES),
        help="What it may do; repeat for several (default: all of them).",
    )
    def create_token(name: str, scopes: tuple[str, ...]):
        """Create an API token for a machine; it is printed once and only its hash is kept."""
        with account_errors():
            row, token = tokens.create_token(name, scopes or SCOPES)
        click.echo(f"token {row.id} ({row.name}, {row.scopes}), shown this once:", err=True)
        click.echo(token)

    @app.cli.command("list-tokens")
    def list_tokens():
        """List API tokens (never the tokens themselves)."""
        rows = tokens.list_tokens()
        if not rows:
            click.echo("no tokens")
        for row in rows:
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
            click.echo(
                f"{row.id:>4}  {row.name:24} {row.prefix}…  {row.scopes:20}  created "
                f"{row.created_at:%Y-%m-%d %H:%M}  last used {used}  {state}"
            )

    @app.cli.command("revoke-token")
    @click.argument("ident")
    @click.option(
        "--name", "by_name", is_flag=True, help="IDENT is a name, even when it is a number."
    )
    def revoke_token(ident: str, by_name: bool):
        """Revoke API tokens by id or by name (a number is an id when a live token has it)."""
        rows = tokens.revoke_token(ident, by="name" if by_name else None)
        if not rows:
            what = "name" if by_name else "id or name"
            raise click.ClickException(f"no active token with {what} {ident!r}")
        for row in rows:
            click.echo(f"revoked token {row.id} ({row.name})")
