"""The two NXCLOUD webhook endpoints: the Flask side of the webhook pipeline (pipeline.py)."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from ..auth import security
from ..core.services import services
from ..ingest import ingest_job
from ..urls import external_url
from . import checks, pipeline

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks/viber")


def receive(endpoint: str):
    settings = services(current_app).webhook_settings
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    call = pipeline.Call(
        endpoint,
        security.request_client_address(),
        request.args,
        request.headers,
        request.content_type,
        security.read_body(limit),
    )
    refusal = pipeline.screen(settings, call, limit)
    if refusal is not None:
        checks.keep_refused(
            settings,
            endpoint,
            call.body.data,
            call.content_type,
            call.headers,
            call.address,
            refusal,
            call.token,
        )
        body, status = pipeline.refused(refusal)
        return jsonify(body), status
    result = ingest_job(pipeline.job_of(settings, call))
    g.webhook_result = result  # for the request's log line and metrics (app/observability/logs.py)
    return pipeline.answer(current_app, result)


@bp.post("/dr")
def delivery_receipt():
    """Receive a delivery receipt (NXCLOUD's dr_webhook)."""
    return receive("dr")


@bp.post("/message")
def user_reply():
    """Receive a user's reply (NXCLOUD's message_webhook)."""
    return receive("message")


def webhook_urls(base: str | None = None) -> dict[str, str]:
    """The two URLs to configure in NXCLOUD: under `base` or PUBLIC_URL when set, else
    absolute for the current request's host."""
    token = services(current_app).webhook_settings.token
    args = {"token": token} if token else {}
    return {
        "dr_webhook": external_url("webhooks.delivery_receipt", base=base, **args),
        "message_webhook": external_url("webhooks.user_reply", base=base, **args),
    }
