"""Times as the JSON answers and the pages write them."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z: 2024-05-01T10:00:00Z (None stays None)."""
    return value.isoformat().replace("+00:00", "Z") if value else None
