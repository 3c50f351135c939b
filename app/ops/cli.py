"""Commands that look after the record: create, seed, reprocess, drain the spool, recount,
purge and rebuild."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import click
from flask import Flask, current_app
from sqlalchemy import func

from .. import config, ingest
from ..auth import audit
from ..core.services import services
from ..core.times import utcnow
from ..ingest import spoolfile as spool
from ..records.models import Message, db
from ..urls import external_url
from ..webhooks.reprocess import rejected_ids
from ..webhooks.reprocess import reprocess as reprocess_body
from ..webhooks.views import webhook_urls
from .imports import import_sends
from .maintenance import (
    count_older,
    parse_age,
    purge,
    recount,
    recount_differences,
    refresh_statistics,
)
from .rebuild import rebuild
from .seed import MAX_CAMPAIGNS, seed

# The ids a reprocess record lists at most (the rest are counted).
AUDIT_IDS = 1000


def register(app: Flask) -> None:
    _record_commands(app)
    _maintenance_commands(app)


def _record_commands(app: Flask) -> None:
    @app.cli.command("init-db")
    def init_db():
        """Create the tables that do not exist yet."""
        db.create_all()
        click.echo(f"database ready: {db.engine.url.render_as_string(hide_password=True)}")

    @app.cli.command("urls")
    @click.option("--host", help="Where the server listens (default 127.0.0.1).")
    @click.option("--port", type=click.IntRange(0, 65535), help="Its port (default 5000).")
    @click.option(
        "--public-url",
        help="The address NXCLOUD and operators reach viberwatch at, e.g. "
        "https://watch.example.com/vw (default: the PUBLIC_URL setting).",
    )
    def urls(host: str | None, port: int | None, public_url: str | None):
        """Print the two webhook URLs to configure in NXCLOUD, and the dashboard's.

        Under PUBLIC_URL (or --public-url) when it is set; else at http://HOST:PORT, the
        address the server listens at."""
        try:
            base = config.public_url(public_url) or app.config["PUBLIC_URL"]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--public-url") from None
        listening = f"http://{host or '127.0.0.1'}:{port or 5000}"
        if base:
            for name, url in webhook_urls(base).items():
                click.echo(f"{name:16} {url}")
            click.echo(f"{'dashboard':16} {external_url('dashboard.messages', base=base)}")
            if host or port:
                click.echo(f"{'listening':16} {listening}/")
            return
        with app.test_request_context(base_url=listening):
            for name, url in webhook_urls().items():
                click.echo(f"{name:16} {url}")
            click.echo(f"{'dashboard':16} {listening}/")
        click.echo(
            "(built from --host and --port: behind a reverse proxy or TLS, set PUBLIC_URL to "
            "the address NXCLOUD reaches, e.g. https://watch.example.com)",
            err=True,
        )

    @app.cli.command("reprocess")
    @click.option(
        "--include-refused",
        is_flag=True,
        help="Also retry bodies refused by webhook authentication.",
    )
    @click.option("--id", "ids", type=int, multiple=True, help="Only these raw body ids.")
    def reprocess(include_refused: bool, ids: tuple[int, ...]):
        """Retry stored bodies that were rejected (after a fix or a configuration change)."""
        targets = list(ids) or rejected_ids(include_refused)
        counts: dict[str, int] = {}
        for raw_id in targets:
            result = reprocess_body(raw_id)
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to do"
        if targets:
            audit.record(
                "reprocess",
                f"{len(targets)} bod{'y' if len(targets) == 1 else 'ies'}",
                {"ids": targets[:AUDIT_IDS], "more": max(0, len(targets) - AUDIT_IDS), **counts},
            )
        click.echo(f"reprocessed {len(targets)}: {summary}")

    @app.cli.group("spool")
    def spool_group():
        """Bodies kept on this server's disk while the database was away."""

    @spool_group.command("status")
    def spool_status():
        """List the spool files: their process, bodies waiting, the oldest waiting."""
        writer = ingest.writer_of(app)
        folder, keys = writer.folder, writer.spooler.keys
        files = spool.files(folder, keys) if folder.is_dir() else []
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
        if folder.is_dir():
            for path in spool.files(folder, keys, spool.DAMAGED_SUFFIX):
                click.echo(f"{path.name}: kept, some of it could not be applied (see the log)")
            for path in spool.others(folder, keys):
                click.echo(f"{path.name}: another database's or an older version's, not drained")
        total = writer.spooler.status()
        click.echo(f"{total.bodies} bodies waiting in {len(files)} spool file(s) in {folder}")

    @spool_group.command("drain")
    @click.option(
        "--file",
        "path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Apply this one file: one kept as damaged, or one of the options below.",
    )
    @click.option(
        "--any-database",
        is_flag=True,
        help="With --file: a file this server wrote under another database address.",
    )
    @click.option(
        "--unsigned", is_flag=True, help="With --file: take the unsigned lines of an older version."
    )
    def spool_drain(path: Path | None, any_database: bool, unsigned: bool):
        """Apply now the spool files whose process has ended (running ones drain their own)."""
        writer = ingest.writer_of(app)
        before = writer.spooler.status().bodies
        if path is not None:
            outcome, reader = ingest.drain_file(
                path, writer.max_batch, any_database=any_database, unsigned=unsigned
            )
            if outcome == "busy":
                raise click.ClickException(f"{path.name} is still being written by its process")
            click.echo(
                f"{path.name}: applied {reader.taken} bodies; {reader.damaged} line(s) not "
                f"trusted, {reader.unread} byte(s) unread"
                + ("; it belongs to another database (--any-database)" if reader.foreign else "")
            )
            if outcome == "away":
                click.echo("the database is away")
                raise SystemExit(1)
            return
        outcome = ingest.drain(writer.folder, None, writer.max_batch)
        left = writer.spooler.status().bodies
        click.echo(
            f"applied {before - left} bodies; {left} still waiting"
            + ("; the database is away" if outcome == "away" else "")
        )
        if outcome == "away":
            raise SystemExit(1)

    @app.cli.command("import-sends")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    def import_sends_command(path: Path):
        """Register the messages of a sending system's log (CSV or NDJSON: requestId, phone,
        text, appkey, functionType, rateType, tags, sentAt), as POST /api/messages would."""
        with open(path, "rb") as f:
            total = sum(1 for line in f if line.strip())
        with click.progressbar(length=total, label="registering", file=sys.stderr) as bar:
            try:
                done = import_sends(path, bar.update)
            except RuntimeError as exc:
                raise click.ClickException(str(exc)) from None
        refresh_statistics()
        summary = ", ".join(f"{n} {k}" for k, n in sorted(done.counts.items())) or "nothing"
        click.echo(f"{path.name}: {summary}")
        if done.rejected:
            out = path.with_name(path.name + ".rejected.csv")
            with open(out, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["line", "reason", "text"])
                writer.writerows(done.rejected)
            click.echo(f"rejected lines, with their reasons: {out}")

    @app.cli.command("recount")
    @click.option("--check", is_flag=True, help="Only report differences, change nothing.")
    def recount_command(check: bool):
        """Rebuild the dashboard counters, the analytics rollups and the campaigns' rollups per
        tag from the messages (after a bulk load or restore)."""
        if check:
            differences = recount_differences()
            for line in differences:
                click.echo(line)
            click.echo("no differences" if not differences else "differences found")
            if differences:
                raise SystemExit(1)
            return
        rows = recount()
        refresh_statistics()
        click.echo(
            f"recounted: {rows['tally']} tally rows, {rows['rollup']} rollup rows,"
            f" {rows['tags']} tag rollup rows"
        )


def _maintenance_commands(app: Flask) -> None:
    @app.cli.command("seed")
    @click.option(
        "--messages",
        "count",
        type=click.IntRange(min=1),
        required=True,
        help="How many messages to add.",
    )
    @click.option(
        "--replies",
        type=click.IntRange(min=0),
        default=None,
        help="About how many replies (default: a fifth of the messages).",
    )
    @click.option(
        "--days",
        type=click.FloatRange(min=1),
        default=120.0,
        show_default=True,
        help="Spread the messages over this many past days.",
    )
    @click.option(
        "--batch", "batch_size", type=click.IntRange(min=1), default=2000, show_default=True
    )
    @click.option("--random-seed", type=int, default=None, help="Make the data reproducible.")
    @click.option(
        "--tags",
        type=click.IntRange(min=0, max=MAX_CAMPAIGNS),
        default=0,
        show_default=True,
        help="Campaigns: tag the messages with this many campaign tags, each sent in a time "
        "window of its own, plus otp and segment tags; 0 tags nothing.",
    )
    def seed_command(count, replies, days, batch_size, random_seed, tags):
        """Fill the database with realistic messages, receipts, replies and contacts."""
        with click.progressbar(length=count, label="seeding messages", show_pos=True) as bar:
            written = seed(
                count,
                replies=replies,
                days=days,
                batch_size=batch_size,
                random_seed=random_seed,
                tags=tags,
                zone=services(current_app).sendtime_zone,
                progress=bar.update,
            )
        recount()
        refresh_statistics()
        click.echo("written: " + ", ".join(f"{n} {name}" for name, n in written.items()))

    @app.cli.command("purge")
    @click.option(
        "--older-than", required=True, help="Age of the last activity, e.g. 90d, 12h, 2w."
    )
    @click.option(
        "--batch", "batch_size", type=click.IntRange(min=1), default=2000, show_default=True
    )
    def purge_command(older_than, batch_size):
        """Delete messages whose last activity is older than the given age, in batches, and
        audit records older than AUDIT_RETENTION_DAYS."""
        try:
            age = parse_age(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
        now = utcnow()
        total = count_older(age, now)
        with click.progressbar(length=total, label="purging messages", show_pos=True) as bar:
            counts = purge(age, batch_size=batch_size, now=now, progress=bar.update)
        refresh_statistics()
        click.echo("deleted: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
        days = current_app.config["AUDIT_RETENTION_DAYS"]
        if not days:
            click.echo("audit records kept: AUDIT_RETENTION_DAYS is 0")
            return
        audited = audit.purge_older(now)
        click.echo(
            f"deleted: {audited} audit record{'s' if audited != 1 else ''} older than "
            f"{days} days (AUDIT_RETENTION_DAYS)"
        )

    @app.cli.command("rebuild")
    @click.option("--check", is_flag=True, help="Only report differences, change nothing.")
    @click.option(
        "--batch", "batch_size", type=click.IntRange(min=1), default=2000, show_default=True
    )
    def rebuild_command(check, batch_size):
        """Recompute every message from the raw record and report any difference."""
        total = db.session.execute(db.select(func.count()).select_from(Message)).scalar()
        with click.progressbar(length=total, label="rebuilding messages", show_pos=True) as bar:
            report = rebuild(batch_size=batch_size, fix=not check, progress=bar.update)
        if report.changed_messages and not check:
            recount()
        if not check:
            refresh_statistics()
        for line in report.lines():
            click.echo(line)
