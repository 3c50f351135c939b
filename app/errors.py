"""What every view answers a refusal with, and the one rule for when JSON is wanted."""

from __future__ import annotations

from flask import Response, jsonify, request

from .core.errors import FieldError, error_body

# Blueprints that machines call, and answer in JSON whatever they ask for.
JSON_BLUEPRINTS = frozenset({"api", "webhooks", "proxy"})


def wants_json() -> bool:
    """The caller reads JSON: a machine's blueprint, a JSON body, a WebSocket handshake, or
    an Accept that prefers it."""
    return (
        request.blueprint in JSON_BLUEPRINTS
        or request.is_json
        or request.headers.get("Upgrade", "").lower() == "websocket"
        or request.accept_mimetypes.best == "application/json"
    )


def error_response(
    status: int, field: str, reason: str, *, error: str | None = None, headers=None
) -> tuple[Response, int, dict]:
    """The JSON refusal: `{"error", "field", "reason"}` with its status."""
    return jsonify(error_body(field, reason, error)), status, dict(headers or {})


def field_error_response(exc: FieldError, headers=None) -> tuple[Response, int, dict]:
    return error_response(exc.status, exc.field, exc.reason, headers=headers)


def refusal(status: int, field: str, reason: str, *, headers=None):
    """A refusal as the caller reads it: JSON, or (a browser) the error as plain text."""
    if wants_json():
        return error_response(status, field, reason, headers=headers)
    text = error_body(field, reason)["error"]
    return text, status, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
