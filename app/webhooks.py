"""The two NXCLOUD webhook endpoints."""
from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for

from . import ingest

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks/viber")


def receive(endpoint: str):
    result = ingest.ingest(endpoint, request.get_data(cache=False), request.content_type,
                           dict(request.headers), request.remote_addr)
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
    return {
        "dr_webhook": url_for("webhooks.delivery_receipt", _external=True),
        "message_webhook": url_for("webhooks.user_reply", _external=True),
    }
