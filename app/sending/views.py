"""Sending a text from a conversation: the reply box, its session window, and `viberwatch send`."""

from __future__ import annotations

import sys

import click
from flask import Blueprint, Flask, current_app, redirect, render_template, request, url_for
from flask.cli import with_appcontext
from flask_login import current_user

from ..htmx import is_htmx
from . import nxcloud, outbound

bp = Blueprint("sending", __name__)


def _thread_url(phone: str) -> str:
    if "conversations.thread" in current_app.view_functions:
        return url_for("conversations.thread", phone=phone)
    return url_for("sending.reply_page", phone=phone)


def _user_name():
    return getattr(current_user, "username", None)


@bp.app_template_global("reply_box")
def reply_box(
    phone: str, outcome: outbound.Outcome | None = None, text: str = "", tags: str = ""
) -> dict:
    """Everything the reply box shows for a phone; templates call it as reply_box(phone)."""
    settings = nxcloud.Settings.from_config(current_app.config)
    window = outbound.session_window(phone)
    return {
        "phone": phone,
        "window": window,
        "rate_type": settings.rate_type,
        "warnings": window.warnings() if settings.rate_type == "Session" else [],
        "missing": settings.missing(),
        "failed": outbound.attempts_for(phone, failed_only=True, limit=10),
        "outcome": outcome,
        # Keep the typed text and tags unless they went out.
        "text": "" if outcome is not None and outcome.sent else text,
        "tags": "" if outcome is not None and outcome.sent else tags,
    }


@bp.post("/conversations/<phone>/send")
def send(phone: str):
    """Send the form's text to this phone through NXCLOUD, registered with the form's tags
    (comma separated)."""
    text = request.form.get("text", "")
    tags = request.form.get("tags", "")
    outcome = outbound.send_text(
        phone,
        text,
        tags=tags,
        confirmed=request.form.get("confirm") == "1",
        sent_by=_user_name(),
    )
    box = reply_box(phone, outcome, text, tags)
    if is_htmx():
        # 200 even for a bad form: htmx swaps only successful answers, and the box says what is wrong.
        return render_template("partials/_reply_box.html", box=box)
    if outcome.invalid or outcome.needs_confirmation:
        return render_template("sending/reply.html", box=box), 422 if outcome.invalid else 200
    return redirect(_thread_url(phone), code=303)


@bp.get("/conversations/<phone>/reply")
def reply_page(phone: str):
    """The reply box on its own page (the thread page includes the same partial)."""
    return render_template("sending/reply.html", box=reply_box(phone))


@bp.get("/conversations/<phone>/session-window")
def session_window(phone: str):
    """The session window partial, polled so it changes when the user writes or time passes."""
    return render_template("partials/_session_window.html", box=reply_box(phone))


@click.command("send")
@click.option("--phone", required=True, help="The recipient, with country code.")
@click.option("--text", required=True, help="The text to send.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Register the message with this tag (repeatable, or comma separated; at most 5).",
)
@click.option("--yes", is_flag=True, help="Send even if it breaks the session rules.")
@with_appcontext
def send_command(phone: str, text: str, tags: tuple[str, ...], yes: bool):
    """Send a text message through NXCLOUD and register it (with its tags)."""
    outcome = outbound.send_text(
        phone, text, tags=",".join(tags), tags_field="--tag", confirmed=yes
    )
    if outcome.invalid:
        raise click.UsageError(outcome.invalid)
    for warning in outcome.warnings:
        click.echo(f"warning: {warning}", err=True)
    if outcome.needs_confirmation:
        click.echo("not sent: add --yes to send anyway", err=True)
        sys.exit(2)
    attempt = outcome.attempt
    if outcome.sent:
        tagged = f" (tags: {', '.join(outcome.tags)})" if outcome.tags else ""
        click.echo(f"sent: requestId {attempt.request_id}{tagged}")
        if attempt.error_reason:  # sent, but the registration was refused
            click.echo(f"warning: {attempt.error_reason}", err=True)
        return
    code = f" (code {attempt.error_code})" if attempt.error_code is not None else ""
    click.echo(f"failed{code}: {attempt.error_reason}", err=True)
    if attempt.error_solution:
        click.echo(f"what to do: {attempt.error_solution}", err=True)
    sys.exit(1)


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    app.cli.add_command(send_command)
