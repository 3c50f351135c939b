"""JSON API: registration of sent messages, and reading a message's record."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, jsonify, request

from .. import ingest
from ..auth import security
from ..errors import error_response
from ..records import queries

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.post("/messages")
def register_message():
    """Register a message the sending system just sent, with its phone and text."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    body = security.read_body(limit)
    if body.too_large:
        reason = body.describe(limit)
        ingest.refuse(
            "register",
            body.data,
            request.content_type,
            dict(request.headers),
            request.remote_addr,
            413,
            f"body: {reason}",
        )
        return error_response(413, "body", reason)
    result = ingest.ingest(
        "register", body.data, request.content_type, dict(request.headers), request.remote_addr
    )
    if result.ok:
        return jsonify({**result.payload, "outcome": result.outcome}), result.http_status
    return jsonify(result.error), result.http_status


@bp.get("/messages/<request_id>")
def read_message(request_id: str):
    """A message's state, receipts and replies."""
    message = queries.get_message(request_id)
    if message is None:
        abort(404)
    return jsonify(queries.message_json(message))


@bp.errorhandler(404)
def not_found(_error):
    return error_response(404, "requestId", "not found", error="no message with this requestId")
