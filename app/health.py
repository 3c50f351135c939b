"""Health check for load balancers, and the benchmark's no-op endpoint when enabled."""
from __future__ import annotations

from flask import Blueprint, Flask, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .models import db

bp = Blueprint("health", __name__)
noop_bp = Blueprint("bench", __name__, url_prefix="/bench")


def database_reachable() -> bool:
    """True when a trivial query round-trips to the database."""
    try:
        db.session.execute(text("SELECT 1")).scalar_one()
        return True
    except SQLAlchemyError:
        db.session.rollback()
        return False


@bp.get("/healthz")
def healthz():
    """Whether this worker can reach its database (200) or not (503)."""
    if database_reachable():
        return jsonify({"status": "ok", "database": "ok"}), 200
    return jsonify({"status": "unavailable", "database": "unreachable"}), 503


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
