"""The OpenAPI 3 document of the webhooks, the JSON API and the CSV export, served at
/openapi.json."""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify

from .. import config
from ..core.payloads import (
    EPOCH_MS_LIMIT,
    MAX_ID_LENGTH,
    MAX_PHONE_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TEXT_LENGTH,
)
from ..core.status import STATUSES

# The arguments of the messages page that the CSV export takes (app/dashboard/filters.py):
# texts of at most 128 characters once trimmed, no control character (else 400).
FILTER_TEXT = {"type": "string"}

bp = Blueprint("openapi", __name__)

SEND_TIME = {
    "anyOf": [
        {"type": "string", "maxLength": 32},
        {"type": "number", "minimum": 0, "exclusiveMaximum": EPOCH_MS_LIMIT},
    ],
    "description": (
        "NXCLOUD's send time of the message: as documented, YYYY-MM-DD HH:MM:SS without a zone"
        " (see SENDTIME_TZ); also ISO 8601 with seconds (its zone, else SENDTIME_TZ), or an"
        " epoch number (seconds below 10^11, milliseconds below 10^14), each read with an"
        " anomaly on the message that names it. Any other text is refused (422)."
    ),
    "example": "2023-07-13 15:12:11",
}
ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": r"\S"}
NULLABLE_STRING = {"type": ["string", "null"]}
TIME = {"type": ["string", "null"], "format": "date-time"}

PRICE = {
    "anyOf": [
        {"type": ["number", "null"], "exclusiveMinimum": -1e12, "exclusiveMaximum": 1e12},
        {"type": "string", "maxLength": 64},
    ],
    "description": (
        "A number; a text of decimal digits (an optional sign and decimal point) is read as"
        " the number, with an anomaly on the message. Any other text is refused (422)."
    ),
}
COST = {
    "type": ["object", "null"],
    "properties": {
        "currency": {"type": ["string", "null"], "maxLength": 16},
        "localPrice": PRICE,
        "originalPrice": PRICE,
        "rateType": {"type": ["string", "null"], "maxLength": 32},
    },
}
# Optional fields may also be null, which counts as absent.
OPTIONAL_ID = {**ID, "type": ["string", "null"]}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error", "field", "reason"],
        "properties": {
            "error": {"type": "string"},
            "field": {"type": "string"},
            "reason": {"type": "string"},
        },
    },
    "Receipt": {
        "type": "object",
        "required": ["status", "requestId", "code", "sendTime"],
        "properties": {
            "status": {"type": "string", "enum": list(STATUSES)},
            "requestId": ID,
            "code": {
                "anyOf": [
                    {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
                    {"type": "string", "maxLength": 20},
                ],
                "description": (
                    "NXCLOUD's status code; a text of decimal digits is read as the number,"
                    " with an anomaly on the message. Any other text is refused (422)."
                ),
            },
            "message": {
                "type": ["string", "null"],
                "maxLength": MAX_TEXT_LENGTH,
                "description": "Missing or null: taken from the code table, with an anomaly.",
            },
            "sendTime": SEND_TIME,
            "cost": COST,
        },
    },
    "Reply": {
        "type": "object",
        "required": ["phone", "appkey", "traceRequestId", "message", "sendTime"],
        "properties": {
            "phone": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PHONE_LENGTH,
                "pattern": r"\S",
            },
            "appkey": ID,
            "traceRequestId": ID,
            "message": {
                "type": "object",
                "description": "Text, or media with fileName.",
                "properties": {
                    "text": {"type": ["string", "null"], "maxLength": MAX_TEXT_LENGTH},
                    "media": {"type": ["string", "null"], "maxLength": 4096, "pattern": r"\S"},
                    "fileName": {"type": ["string", "null"], "maxLength": 1024},
                },
                "anyOf": [
                    {"required": ["text"], "properties": {"text": {"type": "string"}}},
                    {"required": ["media"], "properties": {"media": {"type": "string"}}},
                ],
            },
            "sendTime": SEND_TIME,
        },
    },
    "Registration": {
        "type": "object",
        "required": ["requestId", "phone"],
        "properties": {
            "requestId": ID,
            "phone": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PHONE_LENGTH,
                "pattern": r"\S",
            },
            "text": {"type": ["string", "null"], "maxLength": MAX_TEXT_LENGTH},
            "appkey": OPTIONAL_ID,
            "functionType": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 64,
                "pattern": r"\S",
            },
            "rateType": {"type": ["string", "null"], "maxLength": 32},
            "tags": {
                "type": ["array", "null"],
                "maxItems": MAX_TAGS,
                "items": {"type": "string", "maxLength": MAX_TAG_LENGTH},
            },
        },
    },
    "Outcomes": {
        "type": "object",
        "required": ["outcomes", "accepted", "duplicate", "rejected"],
        "properties": {
            "outcomes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "outcome", "status"],
                    "properties": {
                        "index": {"type": "integer"},
                        "requestId": {"type": ["string", "null"]},
                        "outcome": {
                            "type": "string",
                            "enum": ["accepted", "duplicate", "rejected", "queued"],
                        },
                        "status": {"type": "integer"},
                        "error": {"type": "string"},
                        "field": {"type": "string"},
                        "reason": {"type": "string"},
                    },
                },
            },
            "accepted": {"type": "integer"},
            "duplicate": {"type": "integer"},
            "rejected": {"type": "integer"},
        },
    },
    "Registered": {
        "type": "object",
        "required": ["requestId", "outcome"],
        "properties": {
            "requestId": {"type": "string"},
            "outcome": {"type": "string", "enum": ["accepted", "duplicate"]},
        },
    },
    "Message": {
        "type": "object",
        "required": [
            "requestId",
            "status",
            "phone",
            "code",
            "statusTimes",
            "anomalies",
            "receipts",
            "replies",
        ],
        "properties": {
            "requestId": {"type": "string"},
            "status": {"type": ["string", "null"], "enum": [*STATUSES, None]},
            "phone": NULLABLE_STRING,
            "code": {"type": ["integer", "null"]},
            "codeMessage": NULLABLE_STRING,
            "solution": NULLABLE_STRING,
            "message": NULLABLE_STRING,
            "statusTimes": {"type": "object", "additionalProperties": {"type": "string"}},
            "sendTime": NULLABLE_STRING,
            "sendTimeUtc": TIME,
            "cost": COST,
            "anomalies": {"type": "array", "items": {"type": "string"}},
            "registeredAt": TIME,
            "text": NULLABLE_STRING,
            "appkey": NULLABLE_STRING,
            "functionType": NULLABLE_STRING,
            "rateType": NULLABLE_STRING,
            "tags": {"type": "array", "items": {"type": "string"}},
            "lastActivityAt": TIME,
            "receipts": {
                "type": "array",
                "items": {"type": "object", "required": ["status", "code"]},
            },
            "replies": {
                "type": "array",
                "items": {"type": "object", "required": ["phone", "message"]},
            },
        },
    },
}


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


WEBHOOK_ERRORS = {
    "400": _error("Empty body, not UTF-8, not JSON, or nested too deeply."),
    "401": _error(
        "Refused by webhook authentication (token, signature made for another webhook, or a "
        "replayed signature); the body is kept as refused."
    ),
    "403": _error("The source address is not in WEBHOOK_ALLOW_NETWORKS."),
    "413": _error("Body over MAX_CONTENT_LENGTH; its first MAX_CONTENT_LENGTH bytes are kept."),
    "415": _error("Content-Type is not application/json."),
    "422": _error("JSON, but not the documented shape; the error names the field."),
    "503": _error(
        "Kept but not applied (database trouble, or any other failure while applying it); "
        "push again."
    ),
}
ACCEPTED = {
    "description": "Stored and applied (or a repeat of a body already applied).",
    "content": {"text/plain": {"schema": {"type": "string", "enum": ["success"]}}},
}


def _webhook(summary: str, schema: str) -> dict:
    return {
        "post": {
            "summary": summary,
            "tags": ["webhooks"],
            "security": [{}, {"webhookToken": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            },
            "responses": {"200": ACCEPTED, **WEBHOOK_ERRORS},
        }
    }


API_SECURITY = [{"bearerAuth": []}, {"session": []}]
UNAUTHORIZED = _error("No valid session or bearer token.")


def _filter(name: str, schema: dict, description: str, **extra) -> dict:
    return {"name": name, "in": "query", "schema": schema, "description": description, **extra}


EXPORT_PARAMETERS = [
    _filter(
        "kind",
        {"type": "string", "enum": ["messages", "replies"], "default": "messages"},
        "messages: the filtered messages; replies: the replies to them.",
    ),
    _filter(
        "status",
        {"type": "array", "items": {"type": "string", "enum": ["pending", *STATUSES]}},
        "Messages in any of these statuses (pending: no receipt yet); repeatable, or "
        "comma-separated.",
        style="form",
        explode=True,
    ),
    _filter("phone", FILTER_TEXT, "The phone number or its beginning."),
    _filter(
        "code",
        {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
        "NXCLOUD's code of the last receipt, e.g. 9002.",
    ),
    _filter("q", FILTER_TEXT, "The requestId or its beginning."),
    _filter(
        "from",
        {"type": "string"},
        "A UTC day such as 2024-05-31: the first of the message's last activity (inclusive).",
    ),
    _filter(
        "to",
        {"type": "string"},
        "A UTC day such as 2024-05-31: the last of the message's last activity (inclusive, "
        "not before from).",
    ),
    _filter(
        "anomaly",
        {"type": "string"},
        "1 (or true, on, yes): only messages with contradicting receipts.",
    ),
    _filter(
        "tag",
        {"type": "array", "items": {"type": "string"}},
        f"Messages that carry every one of these campaign tags (each at most {MAX_TAG_LENGTH} "
        "characters); repeatable, or comma-separated.",
        style="form",
        explode=True,
    ),
    _filter("appkey", FILTER_TEXT, "The appkey, exactly."),
]

EXPORT = {
    "get": {
        "summary": (
            "The filtered messages (or, with kind=replies, the replies to them) as CSV: UTF-8 "
            "with a byte order mark, a header row, CRLF line ends, streamed."
        ),
        "tags": ["export"],
        "security": [{"bearerAuth": []}, {"session": []}],
        "parameters": EXPORT_PARAMETERS,
        "responses": {
            "200": {
                "description": "The CSV file (Content-Disposition: attachment).",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
            "400": _error("An argument that cannot be used; the error names it."),
            "401": _error(
                "An unknown or revoked bearer token (field Authorization); without a token or a "
                "session, a caller that asks for JSON (field login). A browser is sent to the "
                "sign-in page instead (302)."
            ),
            "403": _error(
                "A token without the read scope (field scope), or a signed-in viewer (field "
                "role: exports need the operator role)."
            ),
        },
    }
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "viberwatch",
        "version": "1",
        "description": "NXCLOUD Viber webhooks, the JSON API and the CSV export of viberwatch.",
    },
    "paths": {
        "/webhooks/viber/dr": _webhook("A delivery receipt (NXCLOUD's dr_webhook).", "Receipt"),
        "/webhooks/viber/message": _webhook("A user's reply (NXCLOUD's message_webhook).", "Reply"),
        "/api/messages": {
            "post": {
                "summary": (
                    "Register a message just sent through NXCLOUD, with its phone; or many "
                    "at once (a JSON array, or NDJSON: one registration a line)."
                ),
                "tags": ["api"],
                "security": API_SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/Registration"},
                                    {
                                        "type": "array",
                                        "maxItems": config.default("REGISTER_BATCH_MAX"),
                                        # Each item is checked on its own, its outcome in the
                                        # answer: an item that is no Registration is rejected
                                        # alone, the request is not.
                                        "items": {},
                                    },
                                ]
                            }
                        },
                        "application/x-ndjson": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "201": {
                        "description": "Registered.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Registered"}
                            }
                        },
                    },
                    "200": {
                        "description": (
                            "Registered before (a repeat changes nothing); or, for many at "
                            "once, each one's outcome in order."
                        ),
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Registered"},
                                        {"$ref": "#/components/schemas/Outcomes"},
                                    ]
                                }
                            }
                        },
                    },
                    "400": _error(
                        "Empty body, not UTF-8, not JSON, or a missing CSRF token with a session."
                    ),
                    "401": UNAUTHORIZED,
                    "403": _error(
                        "A token without the register scope (field scope), or a signed-in "
                        "viewer (field role: registering needs the operator role)."
                    ),
                    "413": WEBHOOK_ERRORS["413"],
                    "415": WEBHOOK_ERRORS["415"],
                    "422": WEBHOOK_ERRORS["422"],
                    "503": WEBHOOK_ERRORS["503"],
                },
            }
        },
        "/api/messages/{requestId}": {
            "get": {
                "summary": "A message's state, receipts and replies.",
                "tags": ["api"],
                "security": API_SECURITY,
                "parameters": [
                    {
                        "name": "requestId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The message.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Message"}}
                        },
                    },
                    "401": UNAUTHORIZED,
                    "403": _error("A token without the read scope (field scope)."),
                    "404": _error("No message with this requestId."),
                },
            }
        },
        "/export.csv": EXPORT,
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "webhookToken": {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": "WEBHOOK_TOKEN, when configured (or the X-Webhook-Token header).",
            },
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from the API tokens page (/admin/tokens) or "
                "`viberwatch create-token NAME [--scope S]`, with scopes register (POST "
                "/api/messages), read (GET /api/messages/{requestId}, /export.csv) and send "
                "(the send proxy).",
            },
            "session": {
                "type": "apiKey",
                "in": "cookie",
                "name": "viberwatch_session",
                "description": "A signed-in dashboard session (needs X-CSRFToken to POST).",
            },
        },
    },
}


@bp.get("/openapi.json")
def document():
    """The OpenAPI document."""
    return jsonify(DOCUMENT)


def register(app: Flask) -> None:
    app.register_blueprint(bp)
