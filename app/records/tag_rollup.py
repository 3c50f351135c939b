"""Rollups per tag (campaign): what the campaigns pages read instead of every message.

A message counts under each of its tags, in the UTC day and hour it was first heard of
(`Message.created_at`, which never changes):
- `tag_day`: messages by outcome (status, code), cost per currency, messages replied to and
  replies, per tag and day: the campaigns list and a campaign's totals;
- `tag_hour`: the funnel per tag and hour: a campaign's page over time;
- `tag_latency`: time to delivered / to seen per tag and day, in bins 25 % wide with the
  least and greatest value each has held (p50 and p90 exact where they are a bin's least or
  greatest, otherwise interpolated inside it).

Like the analytics rollups (rollup.py), the ingest transaction that changes messages sums
their moves per row (`Moves`) and writes each changed row once, in key order, so the rollups
and the messages commit or roll back together. A tag added by a later registration adds the
message to that tag's rows (tags only grow). `recount` recomputes them from the messages.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .models import Message, MessageTag, TagDay, TagHour, TagLatency, db
from .rollup import (
    add_bin,
    bounds_update,
    day_of,
    hour_of,
    latency_values,
    move_bin,
    rebuild_tables,
    write_tables,
)
from .rollup import bin_of as _bin_of
from .sqlutil import add_counts

# Coarser than the analytics rollups (2 %): the campaigns list reads every tag's bins of a
# range at once, and at 25 % a tag and kind has a few dozen bins, not a hundred or more.
BIN_LOG_RATIO = math.log(1.25)

DAY_KEY = ("tag", "day", "status", "code", "currency")
DAY_SUMS = (
    "n",
    "delivered",
    "seen",
    "replied",
    "replies",
    "priced",
    "local_price",
    "original_price",
)
HOUR_KEY = ("tag", "hour", "status")
HOUR_SUMS = ("n", "delivered", "seen", "replied")
LATENCY_KEY = ("tag", "day", "kind", "bin")

# The message columns a share is computed from.
COLUMNS = (
    "created_at",
    "status",
    "code",
    "cost_currency",
    "cost_local_price",
    "cost_original_price",
    "accepted_at",
    "delivered_at",
    "seen_at",
    "replies_count",
)


def bin_of(seconds: float) -> int:
    return _bin_of(seconds, BIN_LOG_RATIO)


@dataclass(frozen=True)
class Share:
    """What one message adds to each of its tags' rows (keys without the tag)."""

    day_key: tuple  # (day, status, code, currency)
    day: tuple  # DAY_SUMS
    hour_key: tuple  # (hour, status)
    hour: tuple  # HOUR_SUMS
    latency: frozenset  # {(day, kind, bin, seconds)}


def share_of(m) -> Share:
    """A message's share (a Message, or any row with the COLUMNS)."""
    status = m.status or "pending"
    delivered = int(m.delivered_at is not None or m.seen_at is not None)
    seen = int(m.seen_at is not None)
    replies = int(m.replies_count or 0)
    priced = int(
        m.cost_currency is not None
        or m.cost_local_price is not None
        or m.cost_original_price is not None
    )
    day = day_of(m.created_at)
    return Share(
        day_key=(day, status, -1 if m.code is None else m.code, m.cost_currency or ""),
        day=(
            1,
            delivered,
            seen,
            int(replies > 0),
            replies,
            priced,
            float(m.cost_local_price or 0),
            float(m.cost_original_price or 0),
        ),
        hour_key=(hour_of(m.created_at), status),
        hour=(1, delivered, seen, int(replies > 0)),
        latency=frozenset(
            (day, kind, bin_of(v), v)
            for kind, v in latency_values(m.accepted_at, m.delivered_at, m.seen_at)
        ),
    )


def _add(sums_by_key: dict, key: tuple, values: tuple, sign: int) -> None:
    sums = sums_by_key.get(key)
    if sums is None:
        sums = sums_by_key[key] = [0] * len(values)
    for i, x in enumerate(values):
        sums[i] += sign * x


class Moves:
    """The changes of a transaction summed per row of the tag rollups, so each row is written
    once."""

    def __init__(self) -> None:
        self.days: dict[tuple, list] = {}
        self.hours: dict[tuple, list] = {}
        # (tag, day, kind, bin) -> [n, least added value, greatest added value]
        self.latency: dict[tuple, list] = {}

    def move(
        self,
        before_tags: Iterable[str],
        before: Share | None,
        after_tags: Iterable[str],
        after: Share,
    ) -> None:
        """Count a message under `after_tags` as `after` instead of under `before_tags` as
        `before` (None: a message new to the rollups)."""
        old_tags = frozenset(before_tags) if before is not None else frozenset()
        for tag in old_tags | frozenset(after_tags):
            old = before if tag in old_tags else None
            new = after if tag in after_tags else None
            if old == new:
                continue
            for part, sums in (("day", self.days), ("hour", self.hours)):
                old_key = getattr(old, part + "_key") if old else None
                new_key = getattr(new, part + "_key") if new else None
                if old and new and old_key == new_key and getattr(old, part) == getattr(new, part):
                    continue
                if old:
                    _add(sums, (tag, *old_key), getattr(old, part), -1)
                if new:
                    _add(sums, (tag, *new_key), getattr(new, part), 1)
            old_latency = old.latency if old else frozenset()
            new_latency = new.latency if new else frozenset()
            for entry in old_latency - new_latency:
                self._add_latency(tag, entry, -1)
            for entry in new_latency - old_latency:
                self._add_latency(tag, entry, 1)

    def _add_latency(self, tag: str, entry: tuple, n: int) -> None:
        move_bin(self.latency, (tag, *entry[:-1]), n, entry[-1])

    def write(self, conn) -> None:
        """Write every changed row, each table in key order (a fixed lock order)."""
        for model, key, names, sums_by_key in (
            (TagDay, DAY_KEY, DAY_SUMS, self.days),
            (TagHour, HOUR_KEY, HOUR_SUMS, self.hours),
        ):
            changed = sorted((k, sums) for k, sums in sums_by_key.items() if any(sums))
            add_counts(conn, model, key, names, _rows(key, names, changed))
        rows = [
            {
                **dict(zip(LATENCY_KEY, k, strict=True)),
                "n": n,
                # A row that only takes values away says so with low > high (see rollup.py).
                "low": 1.0 if low is None else low,
                "high": 0.0 if high is None else high,
            }
            for k, (n, low, high) in sorted(self.latency.items())
            if n or low is not None
        ]
        add_counts(
            conn, TagLatency, LATENCY_KEY, ("n",), rows, extra=("low", "high"), more=bounds_update
        )


def tagged_rows(*conditions, batch: int = 10_000, conn=None):
    """(tag, *COLUMNS) of every tag of the messages matching `conditions`, streamed."""
    stmt = (
        db.select(MessageTag.tag, *(getattr(Message, c) for c in COLUMNS))
        .join(Message, Message.request_id == MessageTag.request_id)
        .where(*conditions)
    )
    return (conn or db.session).execute(stmt.execution_options(yield_per=batch))


def recounted(conn=None, batch: int = 10_000) -> list[tuple]:
    """The rows of each tag rollup, counted from the messages: [(model, rows)]."""
    days: dict[tuple, list] = {}
    hours: dict[tuple, list] = {}
    latency: dict[tuple, list] = {}
    for row in tagged_rows(batch=batch, conn=conn):
        tag, share = row[0], share_of(row)
        _add(days, (tag, *share.day_key), share.day, 1)
        _add(hours, (tag, *share.hour_key), share.hour, 1)
        for *key, seconds in share.latency:
            add_bin(latency, (tag, *key), 1, seconds, seconds)
    return [
        (TagDay, _rows(DAY_KEY, DAY_SUMS, days.items())),
        (TagHour, _rows(HOUR_KEY, HOUR_SUMS, hours.items())),
        (TagLatency, _rows(LATENCY_KEY, ("n", "low", "high"), latency.items())),
    ]


def _rows(key: tuple, names: tuple, items: Iterable[tuple]) -> list[dict]:
    """Rows of a rollup table from (key, values) pairs."""
    return [
        {**dict(zip(key, k, strict=True)), **dict(zip(names, v, strict=True))} for k, v in items
    ]


TABLES = (TagDay, TagHour, TagLatency)


def fill(conn, batch: int = 10_000) -> int:
    """Add every tagged message to empty tag rollups, through `conn`; returns rows written."""
    return write_tables(conn, recounted(conn, batch), batch)


def rebuild(batch: int = 10_000) -> int:
    """Recompute the tag rollups from the messages; returns the number of rows written."""
    return rebuild_tables(recounted, batch)
