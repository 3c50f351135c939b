"""Commands for users and API tokens: create-user, set-password, logout-user, ensure-admin, tokens."""

from __future__ import annotations

import click
from flask import Flask

from . import tokens, users

# Asked for (hidden, twice) unless given, which scripts do.
password_option = click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="For scripts; without it the password is asked for.",
)


def register(app: Flask) -> None:
    @app.cli.command("create-user")
    @click.argument("name")
    @password_option
    def create_user(name: str, password: str):
        """Create a user who can sign in to the dashboard."""
        try:
            users.create_user(name, password)
        except users.AccountError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"user {name.strip()} created")

    @app.cli.command("set-password")
    @click.argument("name")
    @password_option
    def set_password(name: str, password: str):
        """Change a user's password; their sign-ins end."""
        try:
            users.set_password(name, password)
        except users.AccountError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"password of {name} changed")

    @app.cli.command("logout-user")
    @click.argument("name")
    def logout_user(name: str):
        """End every sign-in of a user, on every browser (their open dashboards disconnect)."""
        try:
            ended = users.logout_everywhere(name)
        except users.AccountError as exc:
            raise click.ClickException(str(exc)) from None
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
    def create_token(name: str):
        """Create an API token for a machine; it is printed once and only its hash is kept."""
        try:
            row, token = tokens.create_token(name)
        except users.AccountError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"token {row.id} ({row.name}), shown this once:", err=True)
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
                f"{row.id:>4}  {row.name:24} {row.prefix}…  created {row.created_at:%Y-%m-%d %H:%M}"
                f"  last used {used}  {state}"
            )

    @app.cli.command("revoke-token")
    @click.argument("ident")
    def revoke_token(ident: str):
        """Revoke API tokens by id or by name."""
        rows = tokens.revoke_token(ident)
        if not rows:
            raise click.ClickException(f"no active token with id or name {ident!r}")
        for row in rows:
            click.echo(f"revoked token {row.id} ({row.name})")
