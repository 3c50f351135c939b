"""The campaigns list, a campaign's page and a comparison; each a fragment for htmx too."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, current_app, jsonify, render_template, request

from ..core.payloads import MAX_TAG_LENGTH as MAX_TAG
from ..dashboard.filters import FilterError
from ..dashboard.templating import duration, percent, price
from ..errors import refusal
from ..htmx import wants_fragment
from . import report

bp = Blueprint("campaigns", __name__)

# Live activity refreshes a page at most this often (seconds); the slow poll only moves a
# quiet page's days along.
REFRESH_GAP = 3
POLL_SECONDS = 60


def _now() -> datetime:
    clock = current_app.config.get("ANALYTICS_CLOCK")
    return clock() if clock else datetime.now(UTC)


def _tag(name: str, required: bool = True) -> str | None:
    """A tag as messages keep it (trimmed, lower case), from the argument `name`."""
    value = (request.args.get(name) or "").strip().lower()
    if not value:
        if required:
            raise FilterError(name, "a tag is required")
        return None
    if len(value) > MAX_TAG:
        raise FilterError(name, f"a tag has at most {MAX_TAG} characters")
    if not value.isprintable() or "," in value:
        raise FilterError(name, "a tag has no comma and no character that is not printable")
    return value


def _range(name: str = "range", default: str | None = None) -> report.DayRange:
    """The range named by the argument `name`; `custom` takes `<name>_from` and `<name>_to`
    (two dates, as a form's date inputs give them)."""
    value = request.args.get(name) or default
    if value == "custom":
        first = (request.args.get(f"{name}_from") or "").strip()
        last = (request.args.get(f"{name}_to") or "").strip() or first
        if not first:
            raise FilterError(f"{name}_from", "the first day is required for a custom range")
        value = f"{first}..{last}"
    return report.parse_range(value, _now(), name)


def figure_text(c: report.Campaign, name: str) -> str:
    """A figure as the pages show it (cost: one line per currency, joined by the template)."""
    value = c.value(name)
    if name.endswith("_rate"):
        return percent(value)
    if name in report.LATENCY_COLUMNS:
        return "–" if value is None else duration(value)
    if name == "cost":
        return ", ".join(cost_lines(c)) or "–"
    return f"{value:,}"


def cost_lines(c: report.Campaign) -> list[str]:
    return [
        f"{price(local)} {currency or '(no currency)'}"
        for currency, (_n, local, _original) in sorted(c.costs.items())
    ]


def failure_lines(c: report.Campaign) -> list[tuple[str, str]]:
    """(text, meaning) of each of the campaign's top failures."""
    return [
        (
            f"{'–' if f['code'] is None else f['code']} ×{f['count']:,}",
            f"{f['status']}: {f['message']}",
        )
        for f in c.top_failures()
    ]


def _list_rows(rows: list[report.Campaign]) -> list[dict]:
    """What each row of the list shows, computed here once rather than by template macros
    (a list of hundreds of campaigns renders in a few milliseconds)."""
    figures = [name for name in report.COLUMNS if name != "tag"]
    return [
        {
            "tag": c.tag,
            "figures": [(name, "" if name == "cost" else figure_text(c, name)) for name in figures],
            "cost": cost_lines(c),
            "failures": failure_lines(c),
        }
        for c in rows
    ]


def _page() -> int:
    value = (request.args.get("page") or "1").strip()
    if not value.isdigit() or not 1 <= int(value) <= 10**6:
        raise FilterError("page", f"must be a page number from 1, got {value[:20]!r}")
    return int(value)


def _live(**context) -> dict:
    return {"refresh_gap": REFRESH_GAP, "poll_seconds": POLL_SECONDS, **context}


@bp.get("/campaigns")
def index():
    """Every campaign (tag) with messages in the range, sorted by any column."""
    try:
        rng = _range()
        column, descending = report.parse_sort(request.args)
        page = _page()
    except FilterError as exc:
        return refusal(400, exc.field, exc.reason)
    if request.accept_mimetypes.best == "application/json":
        rows = report.sorted_campaigns(report.campaigns(rng).values(), column, descending)
        return jsonify({"range": rng.as_json(), "campaigns": [c.as_json() for c in rows]})
    by_latency = column in report.LATENCY_COLUMNS
    found = report.campaigns(rng, latency=by_latency)
    ordered = report.sorted_campaigns(found.values(), column, descending)
    pages = max(1, -(-len(ordered) // report.PAGE_SIZE))
    page = min(page, pages)
    first = (page - 1) * report.PAGE_SIZE
    shown = ordered[first : first + report.PAGE_SIZE]
    if not by_latency:
        report.add_latency({c.tag: c for c in shown}, rng)
    here = {"range": rng.key, "sort": column, "dir": "desc" if descending else "asc"}
    context = _live(
        rng=rng,
        rows=_list_rows(shown),
        total=len(ordered),
        first=first,
        page=page,
        pages=pages,
        sort=column,
        descending=descending,
        columns=report.COLUMNS,
        ranges=report.RANGES,
        here={**here, "page": page} if page > 1 else here,
        sorted_here=here,
    )
    if wants_fragment():
        return render_template("campaigns/_list.html", **context)
    return render_template("campaigns/index.html", **context)


@bp.get("/campaigns/show")
def show():
    """One campaign: its figures and its funnel over time."""
    try:
        tag = _tag("tag")
        rng = _range()
    except FilterError as exc:
        return refusal(400, exc.field, exc.reason)
    c = report.campaign(tag, rng)
    funnel = report.funnel_over_time(tag, rng)
    if request.accept_mimetypes.best == "application/json":
        return jsonify({"range": rng.as_json(), "campaign": c.as_json(), "funnel": funnel})
    context = _live(
        rng=rng,
        c=c,
        funnel=funnel,
        ranges=report.RANGES,
        here={"tag": tag, "range": rng.key},
    )
    if wants_fragment():
        return render_template("campaigns/_show.html", **context)
    return render_template("campaigns/show.html", **context)


@bp.get("/campaigns/compare")
def compare():
    """Two campaigns side by side (b, or a again over the range rb), differences marked."""
    try:
        a = _tag("a")
        b = _tag("b", required=False) or a
        ra = _range("ra")
        rb = _range("rb", default=ra.key)
    except FilterError as exc:
        return refusal(400, exc.field, exc.reason)
    ca, cb = report.campaign(a, ra), report.campaign(b, rb)
    rows = report.compared(ca, cb)
    if request.accept_mimetypes.best == "application/json":
        return jsonify(
            {
                "a": {"range": ra.as_json(), "campaign": ca.as_json()},
                "b": {"range": rb.as_json(), "campaign": cb.as_json()},
                "compared": rows,
            }
        )
    context = _live(
        a=ca,
        b=cb,
        ra=ra,
        rb=rb,
        rows=rows,
        ranges=report.RANGES,
        here={"a": a, "b": b, "ra": ra.key, "rb": rb.key},
    )
    if wants_fragment():
        return render_template("campaigns/_compare.html", **context)
    return render_template("campaigns/compare.html", **context)


def register(app) -> None:
    app.register_blueprint(bp)
    app.add_template_global(figure_text, "campaign_figure")
    app.add_template_global(cost_lines, "campaign_cost_lines")
