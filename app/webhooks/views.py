"""The two NXCLOUD webhook endpoints."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request, url_for

from ..auth import security
from ..records import ingest
from . import auth as webhook_auth

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks/viber")


def receive(endpoint: str):
    settings: webhook_auth.Settings = current_app.extensions["viberwatch.webhook_auth"]
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    address = security.request_client_address()
    body = security.read_body(limit)
    token = webhook_auth.presented_token(request.args, request.headers)
    refusal = webhook_auth.screen(settings, endpoint, address, token, request.headers, body, limit)
    if refusal is not None:
        webhook_auth.keep_refused(
            settings,
            endpoint,
            body.data,
            request.content_type,
            request.headers,
            address,
            refusal,
            token,
        )
        return jsonify(refusal.as_json()), refusal.http_status
    result = ingest.ingest(
        endpoint,
        body.data,
        request.content_type,
        dict(request.headers),
        address,
        signature=webhook_auth.signature_to_take(settings, request.headers),
    )
    g.webhook_result = result  # for the request's log line and metrics (app/observability/logs.py)
    if result.ok:
        # NXCLOUD's callbacks treat HTTP 200 with the body "success" as accepted.
        return "success", 200, {"Content-Type": "text/plain; charset=utf-8"}
    return jsonify(result.error), result.http_status


@bp.post("/dr")
def delivery_receipt():
    """Receive a delivery receipt (NXCLOUD's dr_webhook)."""
    return receive("dr")


@bp.post("/message")
def user_reply():
    """Receive a user's reply (NXCLOUD's message_webhook)."""
    return receive("message")


def webhook_urls() -> dict[str, str]:
    """The two URLs to configure in NXCLOUD, absolute for the current request's host."""
    token = current_app.extensions["viberwatch.webhook_auth"].token
    args = {"token": token} if token else {}
    return {
        "dr_webhook": url_for("webhooks.delivery_receipt", _external=True, **args),
        "message_webhook": url_for("webhooks.user_reply", _external=True, **args),
    }
