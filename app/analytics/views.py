"""The analytics page: delivery funnel, rates, latency, failures, cost and replies."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, current_app, jsonify, render_template, request, url_for

from ..dashboard.filters import STATUS_CHOICES, FilterError, MessageFilter
from ..htmx import wants_fragment
from .ranges import RANGES, TimeRange, parse_range
from .report import prefix_is_narrow, report, rollup_plan, top_phones

bp = Blueprint("analytics", __name__)

# Live activity refreshes the page; this slow poll only moves a quiet page's window along.
POLL_SECONDS = 60
# Least seconds between live refreshes. Read from the rollups, any range takes a fraction of
# a second at a million messages (docs/benchmarks.md); read message by message, a month of
# them takes seconds, so those refreshes are spaced by bucket size.
ROLLUP_REFRESH_GAP = 3
REFRESH_GAP = {"minute": 3, "hour": 10, "day": 60}


def _now() -> datetime:
    clock = current_app.config.get("ANALYTICS_CLOCK")
    return clock() if clock else datetime.now(UTC)


def _parse(args):
    flt = MessageFilter.from_args(args)
    rng = parse_range(args, _now())
    return flt, rng


def range_args(rng: TimeRange) -> dict:
    if rng.key != "custom":
        return {"range": rng.key}
    return {
        "range": "custom",
        "start": rng.start.strftime("%Y-%m-%dT%H:%M"),
        "end": rng.end.strftime("%Y-%m-%dT%H:%M"),
    }


def failure_link(flt: MessageFilter, rng: TimeRange, status: str, code) -> str:
    """The messages page filtered to one failure; its day filter is a superset of the range."""
    args = {**flt.to_args(), "status": [status]}
    if code is not None:
        args["code"] = code
    if flt.date_from is None:
        args["from"] = rng.start.date().isoformat()
    return url_for("dashboard.messages", **args)


def _context(flt: MessageFilter, rng: TimeRange, *, top: bool = True) -> dict:
    data = report(rng, flt, top=top)
    for row in data["failures"]:
        row["link"] = failure_link(flt, rng, row["status"], row["code"])
    here = {**flt.to_args(), **range_args(rng)}
    return {
        "flt": flt,
        "rng": rng,
        "data": data,
        "ranges": RANGES,
        "statuses": STATUS_CHOICES,
        "here": here,
        "poll_seconds": POLL_SECONDS,
        "refresh_gap": ROLLUP_REFRESH_GAP if rollup_plan(rng, flt) else REFRESH_GAP[rng.unit],
        "chips": [
            (label, url_for("analytics.index", **{**rest.to_args(), **range_args(rng)}))
            for label, rest in flt.chips()
        ],
    }


@bp.get("/analytics/top-phones", endpoint="top_phones")
def top_phones_table():
    """The analytics page's table of the phones that replied most, loaded after the page."""
    try:
        flt, rng = _parse(request.args)
    except FilterError as exc:
        return _bad(exc)
    rows = top_phones(rng, flt.conditions(), prefix_is_narrow(flt))
    return render_template("analytics/_top_phones.html", rows=rows)


def _bad(exc):
    return jsonify(exc.as_json()), 400


@bp.get("/analytics")
def index():
    """Delivery analytics for the filtered messages in a time range; a fragment for htmx."""
    try:
        flt, rng = _parse(request.args)
    except FilterError as exc:
        return _bad(exc)
    # The phones that replied most load after the report (no rollup answers them).
    context = _context(flt, rng, top=False)
    if wants_fragment():
        return render_template("analytics/_report.html", **context)
    return render_template("analytics/index.html", **context)


@bp.get("/analytics/data.json")
def data():
    """The same numbers as the analytics page, as JSON."""
    try:
        flt, rng = _parse(request.args)
    except FilterError as exc:
        return _bad(exc)
    return jsonify(_context(flt, rng)["data"])


def register(app) -> None:
    app.register_blueprint(bp)
