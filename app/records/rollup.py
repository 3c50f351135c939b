"""Hourly rollups of the messages for analytics: outcomes and cost (per hour, and per day for
ranges shown per day), and latency bins (per hour, per day and per week for long ranges).

A message counts in the hour it was first heard of (`Message.created_at`, which never
changes). The ingest transaction that changes messages sums their moves (`Moves`) and
writes each changed row once, like the counters' tally, so the rollups and the messages
commit or roll back together; `rebuild` recomputes them from the messages after a bulk load.

Latency (seconds from the first success receipt to the first delivered / seen receipt) is
counted in bins: the analytics histogram's bars, each cut into bins 2 % wide, with the
least and greatest value a bin has held. A percentile read from them is the exact value
where it is a bin's least or greatest, and otherwise interpolated between those two,
less than 2 % from it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import and_, case, or_

from .models import (
    LatencyDay,
    LatencyHour,
    LatencyWeek,
    Message,
    OutcomeDay,
    OutcomeHour,
    db,
)
from .sqlutil import add_counts

# Upper edges of the latency histogram's bars, in seconds; the last bar is open.
LATENCY_EDGES = (
    1,
    2,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    3 * 86400,
    7 * 86400,
)
LATENCY_TARGETS = (("delivered", "delivered_at"), ("seen", "seen_at"))
BIN_RATIO = 1.02
BIN_FLOOR = 0.001  # below a millisecond: one bin
BINS_PER_BAR = 100_000  # bin id = bar * BINS_PER_BAR + position in the bar
_LOG_RATIO = math.log(BIN_RATIO)

# The message columns a share is computed from.
COLUMNS = (
    "created_at",
    "status",
    "code",
    "anomaly",
    "cost_currency",
    "cost_rate_type",
    "cost_local_price",
    "cost_original_price",
    "accepted_at",
    "delivered_at",
    "seen_at",
)


class OutcomeKey(NamedTuple):
    """An OutcomeHour row's key."""

    hour: datetime
    status: str
    code: int
    anomaly: bool
    currency: str
    rate_type: str


class OutcomeSums(NamedTuple):
    """What one message adds to its OutcomeHour row."""

    n: int
    delivered: int
    seen: int
    priced: int
    local_price: float
    original_price: float


OUTCOME_KEY = OutcomeKey._fields
OUTCOME_SUMS = OutcomeSums._fields


def bar_of(seconds: float) -> int:
    """The histogram bar a latency falls in (bar i holds values below LATENCY_EDGES[i])."""
    return bisect_right(LATENCY_EDGES, seconds)


def bin_of(seconds: float, log_ratio: float = _LOG_RATIO) -> int:
    """The bin a latency falls in: bins `log_ratio` wide (the log of the ratio of a bin's
    edges; 2 % unless given) inside the value's histogram bar."""
    bar = bar_of(seconds)
    low = BIN_FLOOR if bar == 0 else LATENCY_EDGES[bar - 1]
    position = 0 if seconds < low else 1 + int(math.log(seconds / low) / log_ratio)
    return bar * BINS_PER_BAR + position


def bin_bounds(bin_id: int) -> tuple[float, float]:
    """The values a bin can hold, [lower, upper)."""
    bar, position = divmod(bin_id, BINS_PER_BAR)
    low = BIN_FLOOR if bar == 0 else LATENCY_EDGES[bar - 1]
    if position == 0:
        return 0.0, low
    top = LATENCY_EDGES[bar] if bar < len(LATENCY_EDGES) else math.inf
    return low * BIN_RATIO ** (position - 1), min(low * BIN_RATIO**position, top)


def latency_values(accepted_at, delivered_at, seen_at) -> list[tuple[str, float]]:
    """(kind, seconds) for each latency the message has; arrivals out of order count as 0."""
    out = []
    for (kind, _), at in zip(LATENCY_TARGETS, (delivered_at, seen_at), strict=False):
        if accepted_at is not None and at is not None:
            out.append((kind, max(0.0, (at - accepted_at).total_seconds())))
    return out


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def day_of(at: datetime) -> datetime:
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def week_of(at: datetime) -> datetime:
    """The Monday 00:00 starting the week of `at`."""
    return day_of(at) - timedelta(days=at.weekday())


@dataclass(frozen=True)
class Share:
    """What one message adds to the rollups."""

    outcome_key: OutcomeKey
    outcome: OutcomeSums
    latency: frozenset  # {(hour, kind, status, code, anomaly, bin, seconds)}


def share_of(m) -> Share:
    """A message's share (a Message, or any row with the COLUMNS)."""
    hour = hour_of(m.created_at)
    key = (m.status or "pending", -1 if m.code is None else m.code, bool(m.anomaly))
    priced = (
        m.cost_currency is not None
        or m.cost_local_price is not None
        or m.cost_original_price is not None
    )
    outcome = OutcomeSums(
        n=1,
        delivered=int(m.delivered_at is not None or m.seen_at is not None),
        seen=int(m.seen_at is not None),
        priced=int(priced),
        local_price=float(m.cost_local_price or 0),
        original_price=float(m.cost_original_price or 0),
    )
    latency = frozenset(
        (hour, kind, *key, bin_of(v), v)
        for kind, v in latency_values(m.accepted_at, m.delivered_at, m.seen_at)
    )
    outcome_key = OutcomeKey(hour, *key, m.cost_currency or "", m.cost_rate_type or "")
    return Share(outcome_key, outcome, latency)


# Each message's outcome counts in its hour and in its day; each latency entry in its hour,
# its day and its week: (model, key columns, the period's start of an hour).
OUTCOME_TABLES = (
    (OutcomeHour, OUTCOME_KEY, hour_of),
    (OutcomeDay, ("day",) + OUTCOME_KEY[1:], day_of),
)
LATENCY_KEY = ("hour", "kind", "status", "code", "anomaly", "bin")
LATENCY_TABLES = (
    (LatencyHour, LATENCY_KEY, hour_of),
    (LatencyDay, ("day",) + LATENCY_KEY[1:], day_of),
    (LatencyWeek, ("week",) + LATENCY_KEY[1:], week_of),
)


def bounds_update(stmt) -> dict:
    """On adding a value, widen the bin's least and greatest (reset when it was empty)."""
    t, new = stmt.table.c, stmt.excluded
    # Rows that only take values away carry low > high (see Moves.write).
    adding = new.low <= new.high
    return {
        "low": case((and_(adding, or_(t.n <= 0, new.low < t.low)), new.low), else_=t.low),
        "high": case((and_(adding, or_(t.n <= 0, new.high > t.high)), new.high), else_=t.high),
    }


def move_bin(bins: dict, key: tuple, n: int, seconds: float) -> None:
    """Count `n` (negative: taken away) values `seconds` into the bin `key` of `bins`
    (key -> [n, least added value, greatest added value]); a value taken away leaves the
    bounds as they are."""
    known = bins.get(key)
    if known is None:
        known = bins[key] = [0, None, None]
    known[0] += n
    if n > 0:
        known[1] = seconds if known[1] is None else min(known[1], seconds)
        known[2] = seconds if known[2] is None else max(known[2], seconds)


class Moves:
    """The changes of a transaction summed per rollup row, so each row is written once."""

    def __init__(self) -> None:
        # (table index, key) -> sums
        self.outcomes: dict[tuple, list] = {}
        # (table index, key) -> [n, least added value, greatest added value]
        self.latency: dict[tuple, list] = {}

    def move(self, before: Share | None, after: Share) -> None:
        """Count a message as `after` instead of `before` (None: a message new to the rollups)."""
        if before is None or (before.outcome_key, before.outcome) != (
            after.outcome_key,
            after.outcome,
        ):
            if before is not None:
                self._add_outcome(before.outcome_key, before.outcome, -1)
            self._add_outcome(after.outcome_key, after.outcome, 1)
        old = before.latency if before is not None else frozenset()
        for entry in old - after.latency:
            self._add_latency(entry, -1)
        for entry in after.latency - old:
            self._add_latency(entry, 1)

    def _add_outcome(self, key: tuple, values: tuple, sign: int) -> None:
        for table, (_model, _names, period) in enumerate(OUTCOME_TABLES):
            full = (table, period(key[0]), *key[1:])
            sums = self.outcomes.get(full)
            if sums is None:
                sums = self.outcomes[full] = [0] * len(OUTCOME_SUMS)
            for i, x in enumerate(values):
                sums[i] += sign * x

    def _add_latency(self, entry: tuple, n: int) -> None:
        for i, (_model, _names, period) in enumerate(LATENCY_TABLES):
            move_bin(self.latency, (i, period(entry[0]), *entry[1:-1]), n, entry[-1])

    def write(self, conn) -> None:
        """Write every changed row, each table in key order (a fixed lock order, so two
        transactions cannot deadlock on the rollup rows)."""
        for i, (model, names, _period) in enumerate(OUTCOME_TABLES):
            rows = [
                {
                    **dict(zip(names, key[1:], strict=False)),
                    **dict(zip(OUTCOME_SUMS, sums, strict=False)),
                }
                for key, sums in sorted(item for item in self.outcomes.items() if item[0][0] == i)
                if any(sums)
            ]
            add_counts(conn, model, names, OUTCOME_SUMS, rows)
        for i, (model, names, _period) in enumerate(LATENCY_TABLES):
            rows = []
            for key, (n, low, high) in sorted((k, v) for k, v in self.latency.items() if k[0] == i):
                if n or low is not None:
                    # A value added widens its bin's bounds (they reset when the bin was empty);
                    # a row that only takes values away says so with low > high.
                    rows.append(
                        {
                            **dict(zip(names, key[1:], strict=False)),
                            "n": n,
                            "low": 1.0 if low is None else low,
                            "high": 0.0 if high is None else high,
                        }
                    )
            add_counts(conn, model, names, ("n",), rows, extra=("low", "high"), more=bounds_update)


def add_bin(bins: dict, key: tuple, n: int, low: float, high: float) -> None:
    """Merge a bin's count, least and greatest value into `bins` (key -> [n, low, high])."""
    known = bins.get(key)
    if known is None:
        bins[key] = [n, low, high]
    else:
        known[0] += n
        known[1], known[2] = min(known[1], low), max(known[2], high)


def bucket_at(sizes, rank: int) -> tuple[int, int]:
    """The index of the bucket holding the rank-th smallest value (1-based), and how many
    values the buckets before it hold."""
    before = 0
    for i, n in enumerate(sizes):
        if before + n >= rank:
            return i, before
        before += n
    return len(sizes) - 1, before


def binned_value(ordered: list[tuple], rank: int) -> float:
    """The rank-th smallest value (1-based) of bins given as (bin, n, low, high) in bin order:
    exact when it is a bin's least or greatest, otherwise interpolated between those two."""
    i, before = bucket_at([row[1] for row in ordered], rank)
    _bin_id, n, low, high = ordered[i]
    k = rank - before
    if k == 1:
        return low
    if k == n:
        return high
    return low + (high - low) * (k - 1) / (n - 1)


def merged_bins(items: Iterable[tuple[tuple, list]]) -> dict:
    bins: dict = {}
    for key, (n, low, high) in items:
        add_bin(bins, key, n, low, high)
    return bins


def merged_sums(items: Iterable[tuple[tuple, list]]) -> dict:
    sums: dict = {}
    for key, values in items:
        known = sums.setdefault(key, [0] * len(values))
        for i, x in enumerate(values):
            known[i] += x
    return sums


class Totals:
    """Rollup rows summed in memory: what `rebuild` writes and what analytics add for the
    part of a range that is not whole hours."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple, list] = {}
        self.latency: dict[tuple, list] = {}  # key -> [n, low, high]

    def add(self, share: Share) -> None:
        sums = self.outcomes.setdefault(share.outcome_key, [0] * len(OUTCOME_SUMS))
        for i, x in enumerate(share.outcome):
            sums[i] += x
        for entry in share.latency:
            add_bin(self.latency, entry[:-1], 1, entry[-1], entry[-1])

    def add_rows(self, rows: Iterable) -> Totals:
        for row in rows:
            self.add(share_of(row))
        return self


def message_rows(*conditions, batch: int = 10_000, conn=None):
    """The COLUMNS of the messages matching `conditions`, streamed."""
    stmt = db.select(*(getattr(Message, c) for c in COLUMNS)).where(*conditions)
    return (conn or db.session).execute(stmt.execution_options(yield_per=batch))


def recounted(conn=None, batch: int = 10_000) -> list[tuple]:
    """The rows of each rollup table, counted from the messages: [(model, rows)]."""
    totals = Totals().add_rows(message_rows(batch=batch, conn=conn))
    tables = []
    for model, names, period in OUTCOME_TABLES:
        sums = (
            totals.outcomes
            if period is hour_of
            else merged_sums(((period(k[0]), *k[1:]), v) for k, v in totals.outcomes.items())
        )
        tables.append(
            (
                model,
                [
                    {
                        **dict(zip(names, k, strict=False)),
                        **dict(zip(OUTCOME_SUMS, v, strict=False)),
                    }
                    for k, v in sums.items()
                ],
            )
        )
    for model, names, period in LATENCY_TABLES:
        bins = (
            totals.latency
            if period is hour_of
            else merged_bins(((period(k[0]), *k[1:]), v) for k, v in totals.latency.items())
        )
        tables.append(
            (
                model,
                [
                    {**dict(zip(names, k, strict=False)), "n": v[0], "low": v[1], "high": v[2]}
                    for k, v in bins.items()
                ],
            )
        )
    return tables


def write_tables(conn, tables: list[tuple], batch: int = 10_000) -> int:
    """Insert each (model, rows) of `tables` through `conn`, `batch` rows a statement;
    returns the rows written."""
    for model, rows in tables:
        for i in range(0, len(rows), batch):
            conn.execute(db.insert(model), rows[i : i + batch])
    return sum(len(rows) for _, rows in tables)


def rebuild_tables(counted, batch: int = 10_000) -> int:
    """Empty the tables `counted(conn, batch)` counts, write what it counts, and commit;
    returns the rows written."""
    conn = db.session.connection()
    tables = counted(conn, batch)
    for model, _rows in tables:
        db.session.execute(db.delete(model))
    written = write_tables(conn, tables, batch)
    db.session.commit()
    return written


def fill(conn, only: tuple[str, ...], batch: int = 10_000) -> int:
    """Add every message to the empty rollup tables named `only` (those a migration creates),
    through `conn`; returns the rows written."""
    tables = [
        (model, rows) for model, rows in recounted(conn, batch) if model.__tablename__ in only
    ]
    return write_tables(conn, tables, batch)


def rebuild(batch: int = 10_000) -> int:
    """Recompute the rollups from the messages; returns the number of rows written."""
    return rebuild_tables(recounted, batch)
