"""Health check for load balancers, and the benchmark's no-op endpoint when enabled."""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .. import ingest
from ..live.hub import hub_of
from ..live.wake import ChannelState
from ..records.models import db

bp = Blueprint("health", __name__)
noop_bp = Blueprint("bench", __name__, url_prefix="/bench")


def database_reachable() -> bool:
    """True when a trivial query round-trips to the database."""
    try:
        db.session.execute(text("SELECT 1")).scalar_one()
        return True
    except SQLAlchemyError:
        try:
            db.session.rollback()
        except SQLAlchemyError:  # the connection died with the database
            db.session.registry().invalidate()
        return False


def live_channel(app: Flask) -> ChannelState | None:
    """This process's live wake-up channel between processes as it last found it; None when
    there is none, or before the process has used it (published after a commit, or listened
    for a live page)."""
    backend = hub_of(app).backend
    return backend.state() if backend is not None else None


@bp.get("/healthz")
def healthz():
    """Whether this worker can take webhooks: into the database (ok), into its spool while
    the database is away or bodies still wait there (degraded), or not at all (503); and
    degraded while its live wake-up channel is down (dashboards then follow the poll)."""
    writer = ingest.writer_of(current_app)
    waiting = writer.spooler.status()
    reachable = database_reachable()
    body = {"database": "ok" if reachable else "unreachable", "spool": waiting.as_json()}
    live = live_channel(current_app)
    if live is not None:
        body["live"] = live.as_json()
    if writer.cannot_store:
        return jsonify({"status": "unavailable", **body}), 503
    if reachable and not waiting.bodies and (live is None or live.up):
        return jsonify({"status": "ok", **body}), 200
    if reachable or writer.spooler.writable():
        return jsonify({"status": "degraded", **body}), 200
    return jsonify({"status": "unavailable", **body}), 503


@noop_bp.post("/noop")
def noop():
    """Read the body and answer like a webhook, without touching the database."""
    request.get_data(cache=False)
    return "success", 200, {"Content-Type": "text/plain; charset=utf-8"}


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    # A baseline for the ingest benchmark: the same server and framework, no database work.
    if app.config.get("BENCH_NOOP"):
        app.register_blueprint(noop_bp)
