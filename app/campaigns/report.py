"""Campaigns: every figure per tag over a range of UTC days, from the rollups per tag
(app/records/tag_rollup.py), never from the messages one by one.

No `request` here. Definitions (docs/analytics.md repeats them):
- A campaign is a tag. Its messages in a range are those with the tag first heard of on a
  day of the range (`Message.created_at`, as on the analytics page), counted under each of
  their tags.
- accepted = has any receipt; pending = none yet; delivered = has a delivered or a seen
  receipt; seen = has a seen receipt; failed / expired = the folded status.
- delivery rate = delivered / messages; seen rate = seen / delivered; reply rate = messages
  with at least one reply / messages; replies = every reply to them.
- Time to delivered / to seen: from the first success receipt, p50 and p90 nearest-rank,
  read from bins 25 % wide (exact where the value is the least or greatest of its bin,
  otherwise interpolated inside it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import groupby
from operator import itemgetter

from sqlalchemy import func

from ..analytics.sql import bucket, bucket_labels
from ..core.status import describe_code
from ..dashboard.filters import FilterError
from ..records.models import TagDay, TagHour, TagLatency, db
from ..records.rollup import LATENCY_TARGETS, binned_value, day_of
from ..records.tag_rollup import DAY_SUMS

RANGES = {
    "1d": ("Today", 1),
    "7d": ("Last 7 days", 7),
    "30d": ("Last 30 days", 30),
    "90d": ("Last 90 days", 90),
    "all": ("All time", None),
}
DEFAULT_RANGE = "7d"
MAX_DAYS = 366
EARLIEST = date(1970, 1, 1)
LATEST = date(9998, 12, 31)
PERCENTILES = (50, 90)
TOP_FAILURES = 3

# The columns the list sorts by, with their headings; None sorts last either way.
COLUMNS = {
    "tag": "Tag",
    "messages": "Messages",
    "accepted": "Accepted",
    "delivered": "Delivered",
    "seen": "Seen",
    "failed": "Failed",
    "expired": "Expired",
    "pending": "Pending",
    "delivery_rate": "Delivery rate",
    "seen_rate": "Seen rate",
    "p50_delivered": "To delivered p50",
    "p90_delivered": "To delivered p90",
    "p50_seen": "To seen p50",
    "p90_seen": "To seen p90",
    "cost": "Cost",
    "replies": "Replies",
    "reply_rate": "Reply rate",
}
DEFAULT_SORT = "messages"
# Campaigns a page of the list shows; sorted by anything but a latency, only those rows'
# latencies are computed.
PAGE_SIZE = 50
LATENCY_COLUMNS = frozenset({"p50_delivered", "p90_delivered", "p50_seen", "p90_seen"})
# What the funnel over time shows, in order.
FUNNEL = ("messages", "accepted", "delivered", "seen", "replied")


class RangeError(FilterError):
    """A range argument that cannot be used; names the argument."""


@dataclass(frozen=True)
class DayRange:
    """Whole UTC days [start, stop), or every day (start and stop None)."""

    key: str
    label: str
    start: datetime | None
    stop: datetime | None

    def conditions(self, column) -> list:
        if self.start is None:
            return []
        return [column >= self.start, column < self.stop]

    def as_json(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "start": None if self.start is None else self.start.date().isoformat(),
            "end": None
            if self.stop is None
            else (self.stop - timedelta(days=1)).date().isoformat(),
        }


def _day(name: str, text: str) -> date:
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise RangeError(name, f"not a date (YYYY-MM-DD), got {text.strip()[:40]!r}") from None
    if not EARLIEST <= day <= LATEST:
        raise RangeError(name, f"must be from {EARLIEST} to {LATEST}")
    return day


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def parse_range(value: str | None, now: datetime, name: str = "range") -> DayRange:
    """1d, 7d, 30d, 90d, all, or FIRST..LAST (two dates, both days included)."""
    key = (value or DEFAULT_RANGE).strip()
    if len(key) > 40:
        raise RangeError(name, "at most 40 characters")
    today = day_of(now.astimezone(UTC))
    if key in RANGES:
        label, days = RANGES[key]
        if days is None:
            return DayRange(key, label, None, None)
        return DayRange(key, label, today - timedelta(days=days - 1), today + timedelta(days=1))
    first, sep, last = key.partition("..")
    if not sep:
        raise RangeError(
            name, f"must be one of {', '.join(RANGES)} or FIRST..LAST (YYYY-MM-DD), got {key!r}"
        )
    start, end = _day(name, first), _day(name, last)
    if end < start:
        raise RangeError(name, "the last day is before the first")
    if (end - start).days + 1 > MAX_DAYS:
        raise RangeError(name, f"a range spans at most {MAX_DAYS} days")
    label = f"{start:%Y-%m-%d} to {end:%Y-%m-%d}" if end != start else f"{start:%Y-%m-%d}"
    return DayRange(f"{start}..{end}", label, _midnight(start), _midnight(end) + timedelta(days=1))


@dataclass
class Campaign:
    """One tag's figures over a range."""

    tag: str
    messages: int = 0
    pending: int = 0
    delivered: int = 0
    seen: int = 0
    failed: int = 0
    expired: int = 0
    replied: int = 0
    replies: int = 0
    # currency -> [messages priced, local price, original price]
    costs: dict = field(default_factory=dict)
    # (status, code) -> messages
    failure_codes: dict = field(default_factory=dict)
    # "p50_delivered" ... -> seconds, or None
    latency: dict = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return self.messages - self.pending

    @property
    def delivery_rate(self) -> float | None:
        return _share(self.delivered, self.messages)

    @property
    def seen_rate(self) -> float | None:
        return _share(self.seen, self.delivered)

    @property
    def reply_rate(self) -> float | None:
        return _share(self.replied, self.messages)

    @property
    def cost(self) -> float | None:
        """The local price summed over currencies (what the list sorts by)."""
        return round(sum(c[1] for c in self.costs.values()), 6) if self.costs else None

    def value(self, column: str):
        if column in LATENCY_COLUMNS:
            return self.latency.get(column)
        return getattr(self, column)

    def top_failures(self, limit: int = TOP_FAILURES) -> list[dict]:
        ordered = sorted(
            self.failure_codes.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] or 0)
        )
        return [
            {
                "status": status,
                "code": code,
                "count": n,
                "message": describe_code(code).message,
            }
            for (status, code), n in ordered[:limit]
            if n
        ]

    def as_json(self) -> dict:
        return {
            "tag": self.tag,
            **{name: self.value(name) for name in COLUMNS if name != "tag"},
            "replied": self.replied,
            "cost_per_currency": [
                {
                    "currency": currency or None,
                    "messages": n,
                    "local": round(local, 6),
                    "original": round(original, 6),
                }
                for currency, (n, local, original) in sorted(self.costs.items())
            ],
            "top_failures": self.top_failures(),
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def campaigns(
    rng: DayRange, tags: Sequence[str] | None = None, *, latency: bool = True
) -> dict[str, Campaign]:
    """Every tag with messages in the range (or only `tags`), by tag; without their latency
    percentiles if `latency` is false (add_latency adds them to the ones shown)."""
    found: dict[str, Campaign] = {}
    d = TagDay
    keys = (d.tag, d.status, d.code, d.currency)
    where = [d.n != 0, *rng.conditions(d.day)]
    if tags is not None:
        where.append(d.tag.in_(list(tags)))
    rows = db.session.execute(
        db.select(*keys, *(func.sum(getattr(d, name)) for name in DAY_SUMS))
        .where(*where)
        .group_by(*keys)
    )
    for (
        tag,
        status,
        code,
        currency,
        n,
        delivered,
        seen,
        replied,
        replies,
        priced,
        local,
        original,
    ) in rows:
        c = found.get(tag)
        if c is None:
            c = found[tag] = Campaign(tag)
        n = int(n)
        c.messages += n
        c.delivered += int(delivered)
        c.seen += int(seen)
        c.replied += int(replied)
        c.replies += int(replies)
        if status == "pending":
            c.pending += n
        elif status in ("failed", "expired"):
            setattr(c, status, getattr(c, status) + n)
            key = (status, None if code == -1 else code)
            c.failure_codes[key] = c.failure_codes.get(key, 0) + n
        if priced:
            cost = c.costs.setdefault(currency, [0, 0.0, 0.0])
            cost[0] += int(priced)
            cost[1] += float(local or 0)
            cost[2] += float(original or 0)
    for tag in [t for t, c in found.items() if not c.messages]:
        del found[tag]
    if latency:
        add_latency(found, rng)
    return found


def add_latency(found: dict[str, Campaign], rng: DayRange) -> None:
    """p50 and p90 of time to delivered and to seen of each campaign, from its bins: the
    database sums the range's days per bin, in key order (tag, kind, bin: no sort), and one
    pass over those sums finds the bin each percentile falls in."""
    for c in found.values():
        for kind, _column in LATENCY_TARGETS:
            for p in PERCENTILES:
                c.latency[f"p{p}_{kind}"] = None
    if not found:
        return
    t = TagLatency
    where = [t.n > 0, *rng.conditions(t.day)]
    if len(found) <= PAGE_SIZE:
        where.append(t.tag.in_(list(found)))
    rows = db.session.connection().execute(
        db.select(t.tag, t.kind, t.bin, func.sum(t.n), func.min(t.low), func.max(t.high))
        .where(*where)
        .group_by(t.tag, t.kind, t.bin)
        .order_by(t.tag, t.kind, t.bin)
    )
    for (tag, kind), bins in groupby(rows, key=itemgetter(0, 1)):
        c = found.get(tag)
        if c is None:
            continue
        ordered = [
            (bin_id, int(n), float(low), float(high)) for _t, _k, bin_id, n, low, high in bins
        ]
        total = sum(row[1] for row in ordered)
        for p in PERCENTILES:
            c.latency[f"p{p}_{kind}"] = round(binned_value(ordered, math.ceil(p / 100 * total)), 3)


def sorted_campaigns(found: Iterable[Campaign], column: str, descending: bool) -> list[Campaign]:
    """By `column`, ties by tag; campaigns without a value (None) last either way."""
    items = sorted(found, key=lambda c: c.tag)
    if column == "tag":
        return sorted(items, key=lambda c: c.tag, reverse=descending)
    known = [c for c in items if c.value(column) is not None]
    unknown = [c for c in items if c.value(column) is None]
    return sorted(known, key=lambda c: c.value(column), reverse=descending) + unknown


def parse_sort(args) -> tuple[str, bool]:
    column = (args.get("sort") or DEFAULT_SORT).strip()
    if column not in COLUMNS:
        raise FilterError("sort", f"must be one of {', '.join(COLUMNS)}, got {column[:40]!r}")
    direction = (args.get("dir") or ("asc" if column == "tag" else "desc")).strip()
    if direction not in ("asc", "desc"):
        raise FilterError("dir", f"must be asc or desc, got {direction[:40]!r}")
    return column, direction == "desc"


def funnel_over_time(tag: str, rng: DayRange) -> dict:
    """The campaign's funnel per hour (when its messages of the range span up to 8 days) or
    per day, from its first to its last hour with messages in the range: the buckets' labels
    and one series per FUNNEL stage, from its hourly rows."""
    h = TagHour
    where = [h.tag == tag, h.n != 0, *rng.conditions(h.hour)]
    first, last = db.session.execute(
        db.select(func.min(h.hour), func.max(h.hour)).where(*where)
    ).one()
    if first is None:
        return {"unit": "hour", "labels": [], "series": {k: [] for k in FUNNEL}}
    unit = "hour" if last - first <= timedelta(days=8) else "day"
    label = bucket(h.hour, unit).label("bucket")
    rows = db.session.execute(
        db.select(
            label,
            h.status,
            func.sum(h.n),
            func.sum(h.delivered),
            func.sum(h.seen),
            func.sum(h.replied),
        )
        .where(*where)
        .group_by(label, h.status)
    )
    labels = bucket_labels(first, last, unit)
    position = {name: i for i, name in enumerate(labels)}
    series = {key: [0] * len(labels) for key in FUNNEL}
    for name, status, n, delivered, seen, replied in rows:
        i = position[name]
        series["messages"][i] += int(n)
        if status != "pending":
            series["accepted"][i] += int(n)
        series["delivered"][i] += int(delivered)
        series["seen"][i] += int(seen)
        series["replied"][i] += int(replied)
    return {"unit": unit, "labels": labels, "series": series}


# What a comparison shows, in order: (name, heading, "more is better" or None when neither).
COMPARED = (
    ("messages", "Messages", None),
    ("accepted", "Accepted", True),
    ("delivered", "Delivered", True),
    ("seen", "Seen", True),
    ("failed", "Failed", False),
    ("expired", "Expired", False),
    ("pending", "Pending", None),
    ("delivery_rate", "Delivery rate", True),
    ("seen_rate", "Seen rate", True),
    ("p50_delivered", "To delivered p50", False),
    ("p90_delivered", "To delivered p90", False),
    ("p50_seen", "To seen p50", False),
    ("p90_seen", "To seen p90", False),
    ("cost", "Cost", None),
    ("replies", "Replies", True),
    ("reply_rate", "Reply rate", True),
)


def compared(a: Campaign, b: Campaign) -> list[dict]:
    """Each COMPARED figure of A and B, B's difference from A, and which is better (None
    where neither or where a figure is missing)."""
    out = []
    for name, heading, more_is_better in COMPARED:
        x, y = a.value(name), b.value(name)
        difference = None if x is None or y is None else round(y - x, 6)
        better = None
        if difference and more_is_better is not None:
            better = "b" if (difference > 0) == more_is_better else "a"
        out.append(
            {
                "name": name,
                "heading": heading,
                "a": x,
                "b": y,
                "difference": difference,
                "better": better,
            }
        )
    return out


def campaign(tag: str, rng: DayRange) -> Campaign:
    """One tag's figures over the range (all zero when it has no messages there)."""
    return campaigns(rng, [tag]).get(tag) or Campaign(tag)
