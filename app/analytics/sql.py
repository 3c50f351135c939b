"""SQL building blocks for analytics that differ between SQLite and PostgreSQL.

Everything is aggregated in the database; these helpers only pick the dialect's spelling.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Float, Integer, String, case, cast, func, literal

from ..records.models import db

# Bucket label formats per unit: PostgreSQL to_char, Python strftime.
BUCKET_FORMATS = {
    "minute": ("YYYY-MM-DD HH24:MI", "%Y-%m-%d %H:%M"),
    "hour": ("YYYY-MM-DD HH24:00", "%Y-%m-%d %H:00"),
    "day": ("YYYY-MM-DD", "%Y-%m-%d"),
}
UNIT_STEP = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


def dialect() -> str:
    return db.session.get_bind().dialect.name


# SQLite keeps a DateTime as the text 'YYYY-MM-DD HH:MM:SS.ffffff' (naive UTC here), so a
# bucket is a prefix of it: far cheaper per row than strftime at a million rows.
SQLITE_PREFIX = {"minute": (16, ""), "hour": (13, ":00"), "day": (10, "")}


def bucket(column, unit: str):
    """A UTC label ('2026-01-02 13:00') naming the bucket a datetime column falls in."""
    if dialect() == "postgresql":
        return func.to_char(column, BUCKET_FORMATS[unit][0])
    length, suffix = SQLITE_PREFIX[unit]
    label = func.substr(column, 1, length, type_=String)
    return label + suffix if suffix else label


def truncate(at: datetime, unit: str) -> datetime:
    if unit == "minute":
        return at.replace(second=0, microsecond=0)
    if unit == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def bucket_starts(start: datetime, end: datetime, unit: str) -> list[datetime]:
    """The start of every bucket from start to end inclusive (the first one's may be before
    `start`)."""
    at = truncate(start.astimezone(UTC), unit)
    starts = []
    while at <= end:
        starts.append(at)
        at += UNIT_STEP[unit]
    return starts


def bucket_labels(start: datetime, end: datetime, unit: str) -> list[str]:
    """Every bucket label from start to end inclusive, so empty buckets show as zero."""
    fmt = BUCKET_FORMATS[unit][1]
    return [at.strftime(fmt) for at in bucket_starts(start, end, unit)]


def seconds_between(earlier, later):
    """Seconds from one datetime column to another, as a float expression."""
    if dialect() == "postgresql":
        return cast(func.extract("epoch", later - earlier), Float)

    # SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds from strftime('%s') and the
    # microseconds after the point, in integers, divided once, so the value is the same
    # float Python's timedelta.total_seconds() gives (julianday keeps only ~50 µs).
    def micro(at):
        return cast(func.strftime("%s", func.substr(at, 1, 19)), Integer) * 1_000_000 + cast(
            func.substr(at, 21), Integer
        )

    return cast(micro(later) - micro(earlier), Float) / literal(1_000_000.0)


def clamp_at_zero(expr):
    """expr, or 0 where it is negative, NULL where it is NULL."""
    if dialect() == "postgresql":
        # Not greatest(): it would turn NULL into 0.
        return case((expr < 0, literal(0.0)), else_=expr)
    # SQLite's two-argument max() is scalar, NULL for NULL, and evaluates expr only once.
    return func.max(expr, literal(0.0))
