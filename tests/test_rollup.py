"""The hourly analytics rollups: kept in step at ingest, equal to a rebuild, and giving the
same report as reading every message."""

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from app.analytics.ranges import TimeRange
from app.analytics.report import (
    LATENCY_LEVELS,
    OUTCOME_LEVELS,
    report,
    rollup_plan,
    spans,
)
from app.dashboard.filters import MessageFilter
from app.records import rollup
from app.records.models import (
    LatencyDay,
    LatencyHour,
    LatencyWeek,
    Message,
    OutcomeDay,
    OutcomeHour,
    db,
)
from support.analytics_data import T0, at, load_fixture
from support.timed_ingest import receipt, register, reply


def span(start: datetime, end: datetime) -> TimeRange:
    return TimeRange("custom", "Custom", start, end)


# 11:20 to 16:00: whole hours 12:00-16:00 from the rollups, 11:20-12:00 and 16:00 itself
# from the messages. H (first heard of at 11:30) is in the range now.
WIDE = span(T0 - timedelta(minutes=40), T0 + timedelta(hours=4))


def stored() -> tuple[dict, ...]:
    """The rows of every rollup table that count something."""
    outcomes = [
        {
            tuple(getattr(r, c) for c in names): tuple(
                round(float(getattr(r, c)), 6) for c in rollup.OUTCOME_SUMS
            )
            for r in db.session.execute(db.select(model)).scalars()
            if r.n
        }
        for model, names, _ in rollup.OUTCOME_TABLES
    ]
    latency = [
        {
            tuple(getattr(r, c) for c in names): (r.n, r.low, r.high)
            for r in db.session.execute(db.select(model)).scalars()
            if r.n
        }
        for model, names, _ in rollup.LATENCY_TABLES
    ]
    return *outcomes, *latency


def test_rollups_kept_at_ingest_equal_a_rebuild(app):
    with app.app_context():
        load_fixture()
        # Changes that move a message from one rollup row to another.
        receipt(at(70), "D", "seen")  # an expired message is seen after all (anomaly)
        receipt(at(71), "F", "success")  # the pending registration is accepted
        receipt(at(72), "F", "delivered")
        register(at(73), "B", "200")  # a late registration of a message first heard by receipt
        reply(at(74), "new", "900", "hello")  # a reply to an unknown message: pending
        kept = stored()
        assert (
            sum(v[0] for v in kept[0].values())
            == db.session.execute(db.select(db.func.count()).select_from(Message)).scalar()
            == 9
        )
        written = rollup.rebuild()
        rebuilt = stored()
    assert written == sum(len(table) for table in rebuilt)
    assert kept == rebuilt
    # D is now anomalous and seen; F delivered 60 s after its success receipt.
    f_hour = (T0, "delivered", "delivered", 11001, False)
    outcome_hour, outcome_day, latency_hour, latency_day, latency_week = rebuilt
    assert [v for k, v in latency_hour.items() if k[:5] == f_hour] == [(1, 60.0, 60.0)]
    # The daily and weekly bins are the hourly ones summed per day and week: here one day.
    for coarser in (latency_day, latency_week):
        assert {k[1:]: v[0] for k, v in coarser.items()} == {
            k[1:]: v[0] for k, v in latency_hour.items()
        }
    assert {k[1:]: v for k, v in outcome_day.items()} == {k[1:]: v for k, v in outcome_hour.items()}


def test_report_over_whole_hours_matches_the_hand_numbers(app):
    with app.app_context():
        load_fixture()
        plan = rollup_plan(WIDE, MessageFilter())
        assert (plan.first, plan.stop) == (T0, T0 + timedelta(hours=4))
        data = report(WIDE)
    # The fixture's numbers (see test_analytics) plus H: accepted, nothing else.
    assert data["funnel"] == {
        "messages": 8,
        "pending": 1,
        "accepted": 7,
        "delivered": 3,
        "seen": 2,
        "failed": 2,
        "expired": 1,
    }
    assert data["range"]["unit"] == "hour"
    assert dict(
        zip(data["rates"]["labels"], data["rates"]["series"]["messages"], strict=False)
    ) == {
        "2026-03-01 11:00": 1,
        "2026-03-01 12:00": 7,
        "2026-03-01 13:00": 0,
        "2026-03-01 14:00": 0,
        "2026-03-01 15:00": 0,
        "2026-03-01 16:00": 0,
    }
    delivered, seen = data["latency"]["delivered"], data["latency"]["seen"]
    assert (delivered["count"], delivered["p50"], delivered["p90"], delivered["p99"]) == (
        3,
        3.0,
        30.0,
        30.0,
    )
    assert (seen["count"], seen["p50"], seen["p90"], seen["p99"]) == (2, 60.0, 119.0, 119.0)
    assert {b["label"]: b["count"] for b in delivered["histogram"] if b["count"]} == {
        "< 1s": 1,
        "2s–5s": 1,
        "30s–1min": 1,
    }
    assert [(f["status"], f["code"], f["count"]) for f in data["failures"]] == [
        ("expired", 11003, 1),
        ("failed", 9002, 1),
        ("failed", 11000, 1),
    ]
    groups = {
        (g["currency"], g["rate_type"]): (g["messages"], g["local"], g["original"])
        for g in data["cost"]["groups"]
    }
    assert groups == {
        ("EUR", "Promotional"): (1, 2.0, 0.3),
        ("USD", "Transactional"): (2, 2.0, 0.3),
    }


FILTERS = [
    MessageFilter(),
    MessageFilter(status=("failed",)),
    MessageFilter(status=("pending", "seen")),
    MessageFilter(code=9002),
    MessageFilter(anomaly=True),
    MessageFilter(status=("delivered",), anomaly=True),
]
RANGES = [
    WIDE,
    span(T0, T0 + timedelta(hours=5)),
    span(T0 - timedelta(days=20), T0 + timedelta(days=20)),
    span(T0 + timedelta(minutes=30), T0 + timedelta(hours=6)),
    span(T0 - timedelta(days=1), T0 + timedelta(days=9)),
]


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: str(f.to_args()) or "none")
def test_rollups_and_messages_give_the_same_report(app, flt):
    with app.app_context():
        load_fixture()
        receipt(at(70), "D", "seen")
        for rng in RANGES:
            assert rollup_plan(rng, flt) is not None
            assert report(rng, flt) == report(rng, flt, use_rollup=False), (rng, flt)


def test_filters_the_rollups_cannot_answer_read_the_messages(app):
    for flt in (
        MessageFilter(phone="79"),
        MessageFilter(q="abc"),
        MessageFilter(date_from=T0.date()),
        MessageFilter(date_to=T0.date()),
    ):
        assert rollup_plan(WIDE, flt) is None
    # Ranges shown per minute, and ranges without a whole hour inside.
    assert rollup_plan(span(T0, T0 + timedelta(hours=3)), MessageFilter()) is None
    assert (
        rollup_plan(
            span(T0 + timedelta(minutes=1), T0 + timedelta(hours=3, minutes=59)), MessageFilter()
        )
        is not None
    )


def test_bins_cover_every_value_and_keep_the_histogram_bars():
    rnd = random.Random(3)
    values = [0.0, 0.0005, 0.001, 0.999, 1.0, 2.0, 59.99, 60.0, 7 * 86400, 40 * 86400]
    values += [math.exp(rnd.uniform(-8, 15)) for _ in range(5000)]
    previous = None
    for v in sorted(values):
        b = rollup.bin_of(v)
        lower, upper = rollup.bin_bounds(b)
        assert lower <= v < upper, (v, b, lower, upper)
        assert b // rollup.BINS_PER_BAR == rollup.bar_of(v)
        if lower > 0:
            assert upper / lower <= rollup.BIN_RATIO + 1e-9
        assert previous is None or b >= previous  # bins are in the order of their values
        previous = b


def spread_messages(rnd: random.Random, start: datetime, seconds: float, count: int) -> list:
    """`count` message rows first heard of over `seconds` from `start` (half an hour either
    side too), with spread-out latencies; most delivered, some seen, failed, expired or
    pending, some anomalous, priced in two currencies."""
    rows = []
    for i in range(count):
        created = start + timedelta(seconds=rnd.uniform(-1800, seconds + 1800))
        accepted = created + timedelta(seconds=rnd.uniform(0.2, 2))
        delivered = accepted + timedelta(seconds=rnd.expovariate(1 / 8))
        seen = (
            delivered + timedelta(seconds=rnd.expovariate(1 / 900)) if rnd.random() < 0.6 else None
        )
        status, code = ("seen", 11002) if seen else ("delivered", 11001)
        fate = rnd.random()
        if fate < 0.08:
            status, code, delivered, seen = "failed", rnd.choice((11000, 9002)), None, None
        elif fate < 0.12:
            status, code, delivered, seen = "expired", 11003, None, None
        elif fate < 0.15:
            status, code, accepted, delivered, seen = None, None, None, None, None
        currency = rnd.choice(("USD", "EUR")) if accepted else None
        rows.append(
            {
                "request_id": f"m{i}",
                "created_at": created,
                "last_activity_at": seen or delivered or accepted or created,
                "status": status,
                "code": code,
                "accepted_at": accepted,
                "delivered_at": delivered,
                "seen_at": seen,
                "anomaly": status == "failed" and rnd.random() < 0.1,
                "receipts_count": 3 if seen else 2 if accepted else 0,
                "replies_count": 0,
                "cost_currency": currency,
                "cost_local_price": 0.012 if currency else None,
                "cost_original_price": 0.002 if currency else None,
                "cost_rate_type": "Transactional" if currency else None,
            }
        )
    return rows


def test_percentiles_from_bins_are_within_two_percent_of_exact(app):
    """Many messages with spread-out latencies, loaded in bulk and rolled up by a rebuild:
    the rollups' percentiles are within 2 % of the exact ones, everything else equal."""
    start = datetime(2026, 4, 1, 5, tzinfo=UTC)
    rows = spread_messages(random.Random(11), start, 3 * 86400, 3000)
    with app.app_context():
        db.session.execute(insert(Message), rows)
        db.session.commit()
        rollup.rebuild()
        # Partial hours at both ends, whole hours around two whole days.
        rng = span(start - timedelta(minutes=30), start + timedelta(days=3, minutes=30))
        plan = rollup_plan(rng, MessageFilter())
        assert [
            (level.model, a, b) for level, a, b in spans(plan.first, plan.stop, LATENCY_LEVELS)
        ] == [
            (LatencyDay, start + timedelta(hours=19), start + timedelta(days=2, hours=19)),
            (LatencyHour, start, start + timedelta(hours=19)),
            (LatencyHour, start + timedelta(days=2, hours=19), start + timedelta(days=3)),
        ]
        rolled, exact = report(rng), report(rng, use_rollup=False)
    for kind in ("delivered", "seen"):
        a, b = rolled["latency"][kind], exact["latency"][kind]
        assert a["count"] == b["count"] > 1000 and a["histogram"] == b["histogram"]
        for p in ("p50", "p90", "p99"):
            assert abs(a[p] - b[p]) <= 0.02 * b[p] + 0.001, (kind, p, a[p], b[p])
    assert_same_report(rolled, exact)


def assert_same_report(rolled: dict, exact: dict) -> None:
    """The report from the rollups is the report from every message: count for count, and
    each percentile within 2 % (interpolated inside its bin)."""
    for kind in ("delivered", "seen"):
        a, b = rolled["latency"][kind], exact["latency"][kind]
        assert a["count"] == b["count"] and a["histogram"] == b["histogram"]
        for p in ("p50", "p90", "p99"):
            assert (a[p] is None) == (b[p] is None)
            assert a[p] is None or abs(a[p] - b[p]) <= 0.02 * b[p] + 0.001, (kind, p, a[p], b[p])
    for section in ("funnel", "rates", "failures", "cost", "replies"):
        assert rolled[section] == exact[section], section


def test_long_ranges_read_weeks_and_days_and_equal_every_message(app):
    """Over seven weeks of messages, ranges of a month and more read whole weeks of latency
    bins and whole days of outcomes, with the days and hours around them: the report equals
    the one from every message, for every filter the rollups take."""
    start = datetime(2026, 5, 6, 13, tzinfo=UTC)  # a Wednesday
    rows = spread_messages(random.Random(7), start, 50 * 86400, 4000)
    ranges = [
        span(start + timedelta(days=3, minutes=20), start + timedelta(days=33, hours=5)),
        span(start, start + timedelta(days=50)),
        span(start - timedelta(days=40), start + timedelta(days=50, hours=2, minutes=7)),
    ]
    with app.app_context():
        db.session.execute(insert(Message), rows)
        db.session.commit()
        rollup.rebuild()
        for rng in ranges:
            plan = rollup_plan(rng, MessageFilter())
            levels = {level.model for level, _, _ in spans(plan.first, plan.stop, LATENCY_LEVELS)}
            assert levels == {LatencyWeek, LatencyDay, LatencyHour}, rng
            days = spans(plan.first, plan.stop, OUTCOME_LEVELS[rng.unit])
            assert {level.model for level, _, _ in days} == {OutcomeDay, OutcomeHour}
            for flt in FILTERS:
                assert_same_report(report(rng, flt), report(rng, flt, use_rollup=False))


@pytest.mark.parametrize("levels", [LATENCY_LEVELS, OUTCOME_LEVELS["day"], OUTCOME_LEVELS["hour"]])
def test_spans_cover_whole_hours_once_with_the_coarsest_periods(levels):
    rnd = random.Random(5)
    origin = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(300):
        first = origin + timedelta(hours=rnd.randrange(0, 24 * 120))
        stop = first + timedelta(hours=rnd.choice((0, 1, 5, 30, 200, 24 * 40, 24 * 100)))
        found = sorted(spans(first, stop, levels), key=lambda s: s[1])
        at = first
        for level, a, b in found:
            assert a == at and a < b  # in order, no gap, no overlap
            assert level.start_of(a) == a and level.start_of(b) == b  # whole periods
            at = b
        assert at == stop
        coarsest = levels[0]
        whole = [(a, b) for level, a, b in found if level is coarsest]
        low = coarsest.start_of(first)
        low = low if low == first else low + coarsest.step
        if len(levels) > 1 and low + coarsest.step <= coarsest.start_of(stop):
            assert whole == [(low, coarsest.start_of(stop))]


def test_recount_command_rebuilds_the_rollups(app):
    with app.app_context():
        load_fixture()
        kept = stored()
        for model in (OutcomeHour, OutcomeDay, LatencyHour, LatencyDay, LatencyWeek):
            db.session.execute(db.delete(model))
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["recount"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert stored() == kept
    assert f"{sum(len(table) for table in kept)} rollup rows" in result.output


@pytest.mark.parametrize(
    "flt",
    [
        MessageFilter(phone="10"),
        MessageFilter(phone="300", status=("failed",)),
        MessageFilter(q="B"),
        MessageFilter(q="Z"),
    ],
    ids=lambda f: str(f.to_args()),
)
def test_a_narrow_prefix_gives_the_same_report_whichever_index_is_used(app, monkeypatch, flt):
    from app.analytics import report as analytics_report

    with app.app_context():
        load_fixture()
        sqlite = db.engine.dialect.name == "sqlite"
        assert analytics_report.prefix_is_narrow(flt) is sqlite
        seeking = [report(rng, flt) for rng in RANGES]
        monkeypatch.setattr(analytics_report, "NARROW_PREFIX", -1)  # never narrow: walk created_at
        assert not analytics_report.prefix_is_narrow(flt)
        assert [report(rng, flt) for rng in RANGES] == seeking
    # A (phone 100), C (failed, phone 300 learned from its reply), B; no requestId starts with Z.
    assert seeking[0]["funnel"]["messages"] == (0 if flt.q == "Z" else 1)
