"""The time range of an analytics or campaigns view: a named one (the last hour, day, 7 or 30
days) or a custom one, parsed from a request's arguments with an error that names the
argument; and the unit its buckets are shown in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..dashboard.filters import FilterError

RANGES = {
    "1h": ("Last hour", timedelta(hours=1)),
    "24h": ("Last day", timedelta(days=1)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
DEFAULT_RANGE = "24h"


class RangeError(FilterError):
    """A time range argument that cannot be used; names the argument."""


@dataclass(frozen=True)
class TimeRange:
    key: str
    label: str
    start: datetime
    end: datetime

    @property
    def unit(self) -> str:
        span = self.end - self.start
        if span <= timedelta(hours=3):
            return "minute"
        if span <= timedelta(days=8):
            return "hour"
        return "day"

    def as_json(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "unit": self.unit,
        }


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# Custom ranges stay inside these years, so that no bucket or bin edge leaves what a
# datetime can hold (year 1 east of UTC has no UTC time at all).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _parse_time(field: str, value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        # Times without a zone are taken as UTC, like every time the app shows.
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except ValueError:
        raise RangeError(field, f"not a date and time (YYYY-MM-DDTHH:MM), got {value!r}") from None
    except OverflowError:
        at = None
    if at is None or not EARLIEST <= at < LATEST:
        raise RangeError(field, f"must be from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d} UTC")
    return at


def parse_range(args: Mapping[str, str], now: datetime) -> TimeRange:
    """The range named by `range` (1h, 24h, 7d, 30d) or `range=custom` with `start` and `end`."""
    key = (args.get("range") or DEFAULT_RANGE).strip()
    if key in RANGES:
        label, span = RANGES[key]
        return TimeRange(key, label, now - span, now)
    if key != "custom":
        raise RangeError("range", f"must be one of {', '.join(RANGES)}, custom, got {key!r}")
    if not args.get("start"):
        raise RangeError("start", "required when range is custom")
    start = _parse_time("start", args["start"])
    end = _parse_time("end", args["end"]) if args.get("end") else now
    if end <= start:
        raise RangeError("end", "must be after start")
    if end - start > timedelta(days=366):
        raise RangeError("end", "a custom range spans at most 366 days")
    return TimeRange("custom", "Custom", start, end)
