"""The one shape of a refusal: what went wrong, the field it is about, and why. Every JSON
error answer of the app is this body (app/errors.py answers it)."""

from __future__ import annotations


def error_body(field: str, reason: str, error: str | None = None) -> dict:
    """`{"error": "<field>: <reason>", "field": ..., "reason": ...}` (or another `error`)."""
    return {"error": error or f"{field}: {reason}", "field": field, "reason": reason}


class FieldError(ValueError):
    """A value refused, the field it came in, and the HTTP status that answers it."""

    status = 400

    def __init__(self, field: str, reason: str, status: int | None = None):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        if status is not None:
            self.status = status

    def as_json(self) -> dict:
        return error_body(self.field, self.reason)
