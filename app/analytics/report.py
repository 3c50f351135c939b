"""Delivery analytics: funnel, rates, latency, failures, cost and replies for a time range.

No `request` here. Every number comes from the message table, whose columns are folded
from the set of receipts, so duplicate and out-of-order receipts count once: aggregated in
SQL from the messages themselves for ranges shown per minute and for filters on phone,
requestId, days, tags (through message_tag) or appkey, and otherwise from the hourly rollups
(app/records/rollup.py) kept beside the messages, plus the messages of the range's partial
hours at either end.

Definitions (docs/analytics.md repeats them):
- The messages of a range are those first heard of in it (`Message.created_at`: the
  registration or the first receipt or reply, whichever came first).
- accepted = has any receipt; delivered = has a delivered or a seen receipt; seen = has a
  seen receipt; failed / expired = the folded status is failed / expired.
- Time to delivered = first delivered receipt received - first success receipt received;
  time to seen likewise. Receipts that arrived out of order give a negative difference,
  counted as 0. Percentiles are nearest-rank: pN is the smallest value with at least N%
  of the values at or below it; read from the rollups, exact when that value is the least
  or greatest of its 2 %-wide bin, otherwise interpolated inside the bin.
- Replies are those received in the range, to messages that match the filters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from sqlalchemy import and_, case, func, literal, or_, union_all

from ..core.status import describe_code
from ..dashboard.filters import MessageFilter, not_indexed
from ..records.models import (
    LatencyDay,
    LatencyHour,
    LatencyWeek,
    Message,
    OutcomeDay,
    OutcomeHour,
    Reply,
    db,
)
from ..records.rollup import (
    BINS_PER_BAR,
    LATENCY_EDGES,
    LATENCY_TARGETS,
    OUTCOME_SUMS,
    add_bin,
    bin_of,
    binned_value,
    bucket_at,
    day_of,
    hour_of,
    week_of,
)
from .ranges import TimeRange
from .sql import (
    BUCKET_FORMATS,
    bucket,
    bucket_labels,
    bucket_starts,
    clamp_at_zero,
    dialect,
    seconds_between,
)

PERCENTILES = (50, 90, 99)
TOP_PHONES = 10
FUNNEL_KEYS = ("messages", "pending", "accepted", "delivered", "seen", "failed", "expired")


# SQLite's planner walks the range of `created_at` even when a phone or requestId prefix
# matches a handful of messages (PostgreSQL's statistics pick the prefix's index by
# themselves). When a probe finds the prefix matches at most this many, the range is
# written so that SQLite cannot use its index and seeks the prefix instead.
NARROW_PREFIX = 20_000


def prefix_is_narrow(flt: MessageFilter) -> bool:
    return dialect() == "sqlite" and flt.has_prefix and flt.prefixes_within(NARROW_PREFIX)


def _cohort(rng: TimeRange, criteria: Sequence, narrow: bool = False) -> list:
    created = not_indexed(Message.created_at) if narrow else Message.created_at
    return [created >= rng.start, created <= rng.end, *criteria]


@dataclass(frozen=True)
class Plan:
    """How a report reads its range: whole hours [first, stop) from the hourly rollups, and
    the messages of the rest of the range (`edges`) one by one."""

    first: datetime
    stop: datetime
    edges: object  # an SQL condition on Message.created_at


def rollup_plan(rng: TimeRange, flt: MessageFilter) -> Plan | None:
    """None where the rollups cannot answer: ranges shown per minute, and filters on phone,
    requestId, last-activity days, tags or appkey, which the rollups are not keyed by."""
    if rng.unit == "minute" or not flt.by_key_only:
        return None
    first = hour_of(rng.start)
    if first < rng.start:
        first += timedelta(hours=1)
    stop = hour_of(rng.end)
    if stop <= first:
        return None
    created = Message.created_at
    edges = [and_(created >= stop, created <= rng.end)]
    if rng.start < first:
        edges.append(and_(created >= rng.start, created < first))
    return Plan(first, stop, or_(*edges))


def _outcome_rows(rng: TimeRange, criteria: Sequence, narrow: bool = False) -> list[tuple]:
    """(bucket, status, code, currency, rate type, messages, delivered, seen, priced, local,
    original) per group, from the messages of the range."""
    return _outcome_groups(rng.unit, _cohort(rng, criteria, narrow))


def _outcome_groups(unit: str, conditions: Sequence) -> list[tuple]:
    """The groups of `_outcome_rows`, of the messages matching `conditions`."""
    m = Message
    label = bucket(m.created_at, unit).label("bucket")
    delivered = or_(m.delivered_at.isnot(None), m.seen_at.isnot(None))
    has_cost = or_(
        m.cost_currency.isnot(None),
        m.cost_local_price.isnot(None),
        m.cost_original_price.isnot(None),
    )
    keys = (label, m.status, m.code, m.cost_currency, m.cost_rate_type)
    return [
        tuple(row)
        for row in db.session.execute(
            db.select(
                *keys,
                func.count(),
                func.sum(case((delivered, 1), else_=0)),
                func.sum(case((m.seen_at.isnot(None), 1), else_=0)),
                func.sum(case((has_cost, 1), else_=0)),
                func.sum(m.cost_local_price),
                func.sum(m.cost_original_price),
            )
            .where(*conditions)
            .group_by(*keys)
        )
    ]


def _unkeyed(status, code, currency, rate_type) -> tuple:
    """Rollup key values back to the message columns' (NULL where the key has a stand-in)."""
    return (
        None if status == "pending" else status,
        None if code == -1 else code,
        currency or None,
        rate_type or None,
    )


def _outcome_rows_rolled(
    rng: TimeRange, flt: MessageFilter, plan: Plan, criteria: Sequence
) -> list[tuple]:
    """The same groups as `_outcome_rows`, from the rollups for whole hours (whole days from
    the daily one where the range is shown per day) plus the messages of the plan's edges,
    grouped in the database."""
    parts = []
    for level, start, stop in spans(plan.first, plan.stop, OUTCOME_LEVELS[rng.unit]):
        o, column = level.model, level.column
        keys = (bucket(column, rng.unit).label("bucket"), o.status, o.code, o.currency, o.rate_type)
        parts.append(
            db.select(*keys, *(func.sum(getattr(o, name)) for name in OUTCOME_SUMS))
            .where(column >= start, column < stop, o.n != 0, *flt.key_conditions(o))
            .group_by(*keys)
        )
    stored = db.session.execute(union_all(*parts)).all() if parts else []
    rows = [(row[0], *_unkeyed(*row[1:5]), *row[5:]) for row in stored]
    # The edges alone: with the whole range beside them, the planner would walk all of it.
    return rows + _outcome_groups(rng.unit, [plan.edges, *criteria])


def _summarise_outcomes(rows: Sequence[tuple], labels: list[str]) -> tuple[dict, list[dict], dict]:
    """Outcomes per bucket, failures by code and cost: sums over the grouped rows."""
    position = {name: i for i, name in enumerate(labels)}
    series = {key: [0] * len(labels) for key in FUNNEL_KEYS}
    failed: dict[tuple, int] = {}
    groups: dict[tuple, dict] = {}
    for (
        name,
        status,
        code,
        currency,
        rate_type,
        n,
        n_delivered,
        n_seen,
        n_cost,
        local,
        original,
    ) in rows:
        i = position[name]
        n = int(n)
        series["messages"][i] += n
        series["pending" if status is None else "accepted"][i] += n
        series["delivered"][i] += int(n_delivered or 0)
        series["seen"][i] += int(n_seen or 0)
        if status in ("failed", "expired"):
            series[status][i] += n
            failed[(status, code)] = failed.get((status, code), 0) + n
        if n_cost:
            group = groups.setdefault(
                (currency or "", rate_type or ""),
                {
                    "currency": currency,
                    "rate_type": rate_type,
                    "messages": 0,
                    "local": 0.0,
                    "original": 0.0,
                    "series": [0.0] * len(labels),
                },
            )
            group["messages"] += int(n_cost)
            group["local"] += float(local or 0)
            group["original"] += float(original or 0)
            group["series"][i] = round(group["series"][i] + float(local or 0), 6)
    total_failed = sum(failed.values())
    failures = []
    for (status, code), count in sorted(
        failed.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] or 0)
    ):
        if not count:
            continue
        described = describe_code(code)
        failures.append(
            {
                "status": status,
                "code": code,
                "count": count,
                "share": round(100 * count / total_failed, 1),
                "message": described.message,
                "solution": described.solution,
            }
        )
    cost = []
    for key in sorted(groups):
        group = groups[key]
        group["local"], group["original"] = round(group["local"], 6), round(group["original"], 6)
        cost.append(group)
    return {"labels": labels, "series": series}, failures, {"labels": labels, "groups": cost}


def funnel_from_rates(rates_: dict) -> dict:
    """The funnel is the sum of the per-bucket outcomes."""
    return {key: sum(values) for key, values in rates_["series"].items()}


def _histogram_labels() -> list[str]:
    def short(seconds: int) -> str:
        for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
            if seconds >= size and seconds % size == 0:
                return f"{seconds // size}{unit}"
        return f"{seconds}s"

    labels = [f"< {short(LATENCY_EDGES[0])}"]
    labels += [f"{short(a)}–{short(b)}" for a, b in pairwise(LATENCY_EDGES)]
    labels.append(f"≥ {short(LATENCY_EDGES[-1])}")
    return labels


def _latency_result(counts: dict[str, list[int]], found: dict) -> dict:
    result = {}
    for key, _ in LATENCY_TARGETS:
        result[key] = {
            "count": sum(counts[key]),
            "histogram": [
                {"label": label, "count": n}
                for label, n in zip(_histogram_labels(), counts[key], strict=False)
            ],
        }
        for p in PERCENTILES:
            result[key][f"p{p}"] = found.get((key, p))
    return result


def _latency_columns() -> list:
    """Each message's seconds to delivered and to seen (NULL where it has none), as columns
    named after their kind."""
    m = Message
    return [
        clamp_at_zero(seconds_between(m.accepted_at, getattr(m, column))).label(key)
        for key, column in LATENCY_TARGETS
    ]


def latency(rng: TimeRange, criteria: Sequence = (), narrow: bool = False) -> dict:
    """Seconds from the first success receipt to the first delivered and to the first seen
    receipt: count, p50/p90/p99 and a histogram of each, in two statements."""
    m = Message
    columns = _latency_columns()
    # Computed once per message into a temporary table, not once per reference to it.
    values = (
        db.select(*columns)
        .where(
            *_cohort(rng, criteria, narrow),
            m.accepted_at.isnot(None),
            or_(*(getattr(m, column).isnot(None) for _, column in LATENCY_TARGETS)),
        )
        .cte("latency_values")
        .prefix_with("MATERIALIZED")
    )
    parts = []
    for key, _ in LATENCY_TARGETS:
        d = values.c[key]
        index = case(
            *((d < edge, i) for i, edge in enumerate(LATENCY_EDGES)), else_=len(LATENCY_EDGES)
        )
        parts.append(
            db.select(literal(key).label("k"), index.label("i"), func.count().label("n"))
            .select_from(values)
            .where(d.isnot(None))
            .group_by(index)
        )
    counts = {key: [0] * (len(LATENCY_EDGES) + 1) for key, _ in LATENCY_TARGETS}
    for key, i, n in db.session.execute(union_all(*parts)):
        counts[key][int(i)] = int(n)
    return _latency_result(counts, _percentiles(values, counts))


def _percentiles(values, counts: dict[str, list[int]]) -> dict:
    """Exact nearest-rank percentiles: find each one's histogram bucket, then sort only that
    bucket's values; all lookups share one statement and one pass over the messages."""
    parts = []
    for key, bars in counts.items():
        total = sum(bars)
        if not total:
            continue
        d = values.c[key]
        for p in PERCENTILES:
            rank = math.ceil(p / 100 * total)  # 1-based
            i, before = bucket_at(bars, rank)
            conditions = [d.isnot(None)]
            if i > 0:
                conditions.append(d >= LATENCY_EDGES[i - 1])
            if i < len(LATENCY_EDGES):
                conditions.append(d < LATENCY_EDGES[i])
            one = (
                db.select(d.label("v"))
                .where(*conditions)
                .order_by(d)
                .offset(rank - before - 1)
                .limit(1)
                .subquery(f"{key}_p{p}")
            )
            parts.append(
                db.select(literal(key).label("k"), literal(p).label("p"), one.c.v).select_from(one)
            )
    if not parts:
        return {}
    return {
        (key, int(p)): round(float(value), 3)
        for key, p, value in db.session.execute(union_all(*parts)).all()
    }


@dataclass(frozen=True)
class Level:
    """A rollup table read for whole periods: its period column, where a period starts, and
    how long it is."""

    model: type
    column: object
    start_of: Callable[[datetime], datetime]
    step: timedelta


HOURS = Level(OutcomeHour, OutcomeHour.hour, hour_of, timedelta(hours=1))
# Coarsest first, the last one hourly.
OUTCOME_LEVELS = {
    "day": (Level(OutcomeDay, OutcomeDay.day, day_of, timedelta(days=1)), HOURS),
    "hour": (HOURS,),
}
LATENCY_LEVELS = (
    Level(LatencyWeek, LatencyWeek.week, week_of, timedelta(days=7)),
    Level(LatencyDay, LatencyDay.day, day_of, timedelta(days=1)),
    Level(LatencyHour, LatencyHour.hour, hour_of, timedelta(hours=1)),
)


def spans(first: datetime, stop: datetime, levels: Sequence[Level]) -> list[tuple]:
    """Whole hours [first, stop) as (level, start, stop): the whole periods of the coarsest
    level inside them, and the hours around those by the finer levels in turn."""
    level, finer = levels[0], levels[1:]
    if not finer:
        return [(level, first, stop)] if first < stop else []
    start = level.start_of(first)
    if start < first:
        start += level.step
    end = level.start_of(stop)
    if end <= start:
        return spans(first, stop, finer)
    return [(level, start, end), *spans(first, start, finer), *spans(end, stop, finer)]


def _latency_rolled(flt: MessageFilter, plan: Plan, criteria: Sequence) -> dict:
    """The same as `latency`, from the latency bins of whole hours plus the latencies of the
    messages of the plan's edges, binned here."""
    bins: dict[tuple, list] = {}
    parts = []
    for level, start, stop in spans(plan.first, plan.stop, LATENCY_LEVELS):
        model, column = level.model, level.column
        parts.append(
            db.select(
                model.kind, model.bin, func.sum(model.n), func.min(model.low), func.max(model.high)
            )
            .where(column >= start, column < stop, model.n > 0, *flt.key_conditions(model))
            .group_by(model.kind, model.bin)
        )
    for kind, bin_id, n, low, high in db.session.execute(union_all(*parts)) if parts else ():
        add_bin(bins, (kind, bin_id), int(n), float(low), float(high))
    edges = db.select(*_latency_columns()).where(plan.edges, *criteria)
    for row in db.session.execute(edges):
        for (kind, _), seconds in zip(LATENCY_TARGETS, row, strict=True):
            if seconds is not None:
                add_bin(bins, (kind, bin_of(seconds)), 1, seconds, seconds)
    counts = {key: [0] * (len(LATENCY_EDGES) + 1) for key, _ in LATENCY_TARGETS}
    for (kind, bin_id), (n, _, _) in bins.items():
        counts[kind][bin_id // BINS_PER_BAR] += n
    found = {}
    for kind, _ in LATENCY_TARGETS:
        ordered = sorted((bin_id, *v) for (k, bin_id), v in bins.items() if k == kind)
        total = sum(counts[kind])
        for p in PERCENTILES if total else ():
            found[(kind, p)] = round(binned_value(ordered, math.ceil(p / 100 * total)), 3)
    return _latency_result(counts, found)


# On SQLite, up to this many buckets, the replies of a range with no filter are counted
# bucket by bucket, each a count over the index on `received_at`, in one statement: cheaper
# than naming the bucket of every reply (at 1M, 30 days: 6 ms against 20; 90 days: 22
# against 58), but not for a week's 169 hours (25 against 4).
COUNTED_BUCKETS = 100


def _reply_counts(rng: TimeRange) -> list[int] | None:
    """Replies per bucket of the range, when it has few enough buckets (else None)."""
    starts = bucket_starts(rng.start, rng.end, rng.unit)
    if len(starts) > COUNTED_BUCKETS:
        return None
    received = Reply.received_at
    parts = []
    for i, at in enumerate(starts):
        before = received < starts[i + 1] if i + 1 < len(starts) else received <= rng.end
        parts.append(
            db.select(literal(i).label("i"), func.count().label("n"))
            .select_from(Reply)
            .where(received >= max(at, rng.start), before)
        )
    found = dict(db.session.execute(union_all(*parts)).all())
    return [int(found.get(i, 0)) for i in range(len(starts))]


def _reply_counts_grouped(
    rng: TimeRange, labels: list[str], criteria: Sequence = (), narrow: bool = False
) -> list[int]:
    """Replies per bucket of the range that match the filters, grouped by their bucket's
    label."""
    label = bucket(Reply.received_at, rng.unit).label("bucket")
    scoped = _replies_scoped(rng, criteria, narrow)
    per_bucket = dict(
        db.session.execute(
            scoped(db.select(label, func.count()).select_from(Reply)).group_by(label)
        ).all()
    )
    return [int(per_bucket.get(name, 0)) for name in labels]


def _reply_counts_truncated(
    rng: TimeRange, labels: list[str], criteria: Sequence = (), narrow: bool = False
) -> list[int]:
    """The same on PostgreSQL, grouped by the start of their bucket (`date_trunc`) and named
    here: `to_char` on every reply cost more than the rest (at 1M, 90 days: 45 ms against 84;
    a count per bucket, 56)."""
    start = func.date_trunc(rng.unit, Reply.received_at).label("start")
    scoped = _replies_scoped(rng, criteria, narrow)
    fmt = BUCKET_FORMATS[rng.unit][1]
    per_bucket = {
        at.strftime(fmt): n
        for at, n in db.session.execute(
            scoped(db.select(start, func.count()).select_from(Reply)).group_by(start)
        )
    }
    return [int(per_bucket.get(name, 0)) for name in labels]


def _replies_scoped(rng: TimeRange, criteria: Sequence, narrow: bool):
    """A function that scopes a statement over replies to the range and the filters."""
    r = Reply
    received = not_indexed(r.received_at) if narrow else r.received_at
    where = [received >= rng.start, received <= rng.end]

    def scoped(stmt):
        if criteria:
            stmt = stmt.join(Message, Message.request_id == r.trace_request_id).where(*criteria)
        return stmt.where(*where)

    return scoped


def replies(
    rng: TimeRange, criteria: Sequence = (), narrow: bool = False, *, top: bool = True
) -> dict:
    """Replies received in the range per bucket, and (`top`) the phones that replied most."""
    labels = bucket_labels(rng.start, rng.end, rng.unit)
    if dialect() == "postgresql":
        counts = _reply_counts_truncated(rng, labels, criteria, narrow)
    else:
        counts = None if criteria or narrow else _reply_counts(rng)
    if counts is None:
        counts = _reply_counts_grouped(rng, labels, criteria, narrow)
    found = {"labels": labels, "counts": counts, "total": sum(counts)}
    if top:
        found["top_phones"] = top_phones(rng, criteria, narrow)
    return found


def top_phones(rng: TimeRange, criteria: Sequence = (), narrow: bool = False) -> list[dict]:
    """The phones that replied most in the range (most replies first, then by phone). No
    rollup smaller than the replies answers it, so the page loads it after the report."""
    r = Reply
    n = func.count().label("n")
    top = db.session.execute(
        _replies_scoped(rng, criteria, narrow)(db.select(r.phone, n).select_from(r))
        .group_by(r.phone)
        .order_by(n.desc(), r.phone)
        .limit(TOP_PHONES)
    ).all()
    return [{"phone": phone, "count": int(count)} for phone, count in top]


def report(
    rng: TimeRange,
    flt: MessageFilter | None = None,
    *,
    use_rollup: bool = True,
    top: bool = True,
) -> dict:
    """Everything the analytics page shows, as plain JSON-ready data. Whole hours come from
    the hourly rollups where the filter allows (`use_rollup=False` reads every message);
    without `top`, the replies leave out the phones that replied most."""
    flt = flt or MessageFilter()
    criteria = flt.conditions()
    plan = rollup_plan(rng, flt) if use_rollup else None
    labels = bucket_labels(rng.start, rng.end, rng.unit)
    narrow = prefix_is_narrow(flt)
    if plan is None:
        rates, failures, cost = _summarise_outcomes(_outcome_rows(rng, criteria, narrow), labels)
        latency_ = latency(rng, criteria, narrow)
    else:
        rates, failures, cost = _summarise_outcomes(
            _outcome_rows_rolled(rng, flt, plan, criteria), labels
        )
        latency_ = _latency_rolled(flt, plan, criteria)
    return {
        "range": rng.as_json(),
        "funnel": funnel_from_rates(rates),
        "rates": rates,
        "latency": latency_,
        "failures": failures,
        "cost": cost,
        "replies": replies(rng, criteria, narrow, top=top),
    }
