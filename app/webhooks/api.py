"""JSON API: registration of sent messages (one, or many at once), and reading a message's
record."""

from __future__ import annotations

import json

from flask import Blueprint, abort, current_app, jsonify, request

from .. import ingest
from ..auth import security
from ..errors import error_response
from ..records import queries

bp = Blueprint("api", __name__, url_prefix="/api")

NDJSON = "application/x-ndjson"


@bp.post("/messages")
def register_message():
    """Register a message the sending system just sent, with its phone and text; or many at
    once: a JSON array, or NDJSON (one registration a line), each answered in order."""
    many = request.mimetype == NDJSON
    limit = current_app.config["REGISTER_BODY_MAX" if many else "MAX_CONTENT_LENGTH"]
    if not many and request.content_length and request.content_length > limit:
        # Perhaps an array: the bulk limit holds for it (a single body is small anyway).
        limit = current_app.config["REGISTER_BODY_MAX"]
    request.max_content_length = limit
    body = security.read_body(limit)
    if body.too_large:
        return _too_large(body, limit)
    items = _items(body.data, many)
    if items is None:
        one = current_app.config["MAX_CONTENT_LENGTH"]
        if len(body.data) > one:
            return _too_large(security.Body(body.data[:one], len(body.data), True), one)
        result = ingest.ingest(
            "register", body.data, request.content_type, dict(request.headers), request.remote_addr
        )
        if result.ok:
            return jsonify({**result.payload, "outcome": result.outcome}), result.http_status
        return jsonify(result.error), result.http_status
    most = current_app.config["REGISTER_BATCH_MAX"]
    if len(items) > most:
        return error_response(413, "body", f"{len(items)} registrations; at most {most} at once")
    return jsonify(register_many(items))


def _too_large(body: security.Body, limit: int):
    """A body over its limit: kept, cut at the limit, as refused; answered 413."""
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


def _items(data: bytes, ndjson: bool) -> list[bytes] | None:
    """The registrations of a bulk body, each as the bytes it is kept as; None for one."""
    if ndjson:
        return [line.strip() for line in data.splitlines() if line.strip()]
    if not data.lstrip().startswith(b"["):
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        return None  # not JSON: refused as one body, with its reason
    if not isinstance(parsed, list):
        return None
    return [json.dumps(item, ensure_ascii=False).encode() for item in parsed]


def register_many(items: list[bytes]) -> dict:
    """Each registration applied as `POST /api/messages` applies one; their outcomes in order,
    and how many of each."""
    headers = dict(request.headers)
    jobs = [
        ingest.new_job("register", item, "application/json", headers, request.remote_addr)
        for item in items
    ]
    results = ingest.writer_of(current_app._get_current_object()).submit_many(jobs)
    outcomes, counts = [], {"accepted": 0, "duplicate": 0, "rejected": 0}
    for index, result in enumerate(results):
        outcome = {
            "index": index,
            "requestId": result.request_id,
            "outcome": result.outcome,
            "status": result.http_status,
        }
        if result.error:
            outcome.update(result.error)
        outcomes.append(outcome)
        counts[result.outcome] = counts.get(result.outcome, 0) + 1
    return {"outcomes": outcomes, **counts}


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
