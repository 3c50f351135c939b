"""The `viberwatch` command: Flask's CLI with this app preset, plus our commands."""

from __future__ import annotations

import os

import click
from flask import Flask
from flask.cli import FlaskGroup

from .models import db
from .records import ingest, spool


def register(app: Flask) -> None:
    @app.cli.command("init-db")
    def init_db():
        """Create the tables that do not exist yet."""
        db.create_all()
        click.echo(f"database ready: {db.engine.url.render_as_string(hide_password=True)}")

    @app.cli.command("urls")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=5000, show_default=True)
    def urls(host: str, port: int):
        """Print the two webhook URLs to configure in NXCLOUD."""
        from .webhooks import webhook_urls

        with app.test_request_context(base_url=f"http://{host}:{port}"):
            for name, url in webhook_urls().items():
                click.echo(f"{name:16} {url}")
            click.echo(f"{'dashboard':16} http://{host}:{port}/")

    @app.cli.command("reprocess")
    @click.option(
        "--include-refused",
        is_flag=True,
        help="Also retry bodies refused by webhook authentication.",
    )
    @click.option("--id", "ids", type=int, multiple=True, help="Only these raw body ids.")
    def reprocess(include_refused: bool, ids: tuple[int, ...]):
        """Retry stored bodies that were rejected (after a fix or a configuration change)."""
        targets = list(ids) or ingest.rejected_ids(include_refused)
        counts: dict[str, int] = {}
        for raw_id in targets:
            result = ingest.reprocess(raw_id)
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to do"
        click.echo(f"reprocessed {len(targets)}: {summary}")

    @app.cli.group("spool")
    def spool_group():
        """Bodies kept on this server's disk while the database was away."""

    @spool_group.command("status")
    def spool_status():
        """List the spool files: their process, bodies waiting, the oldest waiting."""
        writer = ingest.writer_of(app)
        files = sorted(writer.folder.glob("*" + spool.SUFFIX)) if writer.folder.is_dir() else []
        for path in files:
            fd = spool.claim(path)
            running = fd is None
            if fd is not None:
                os.close(fd)
            waiting = spool.read_status(path)
            since = (
                f", oldest received {waiting.oldest:%Y-%m-%d %H:%M:%S} UTC"
                if waiting.oldest
                else ""
            )
            click.echo(
                f"{path.name}: {waiting.bodies} waiting{since} "
                f"({'its process runs and drains it' if running else 'its process has ended'})"
            )
        total = writer.spool_status()
        click.echo(
            f"{total.bodies} bodies waiting in {len(files)} spool file(s) in {writer.folder}"
        )

    @spool_group.command("drain")
    def spool_drain():
        """Apply now the spool files whose process has ended (running ones drain their own)."""
        writer = ingest.writer_of(app)
        before = writer.spool_status().bodies
        outcome = ingest.drain(writer.folder, None, writer.max_batch)
        left = writer.spool_status().bodies
        click.echo(
            f"applied {before - left} bodies; {left} still waiting"
            + ("; the database is away" if outcome == "away" else "")
        )
        if outcome == "away":
            raise SystemExit(1)

    @app.cli.command("recount")
    @click.option("--check", is_flag=True, help="Only report differences, change nothing.")
    def recount(check: bool):
        """Rebuild the dashboard counters and the analytics rollups from the messages (after a
        bulk load or restore)."""
        from .maintenance import recount, recount_differences

        if check:
            differences = recount_differences()
            for line in differences:
                click.echo(line)
            click.echo("no differences" if not differences else "differences found")
            if differences:
                raise SystemExit(1)
            return
        rows = recount()
        click.echo(f"recounted: {rows['tally']} tally rows, {rows['rollup']} rollup rows")


def _create_app():
    from . import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app)
def main():
    """viberwatch: NXCLOUD Viber webhooks, watched."""
