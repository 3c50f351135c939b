"""The operator's pages: messages with filters and counters, one message, rejected bodies."""

from __future__ import annotations

from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request, url_for

from ..auth import audit
from ..core.status import describe_code
from ..htmx import wants_fragment
from ..records import queries
from ..records.models import Message, RawBody, db
from ..webhooks.reprocess import reprocess as reprocess_body
from ..webhooks.views import webhook_urls
from . import listing
from .filters import STATUS_CHOICES, FilterError, MessageFilter, whole_number

bp = Blueprint("dashboard", __name__)

REJECTED_PAGE = 50
REJECTED_OUTCOMES = ("rejected", "refused")
MAX_ID = 2**63 - 1  # ids are BIGINT


def _messages_context(flt: MessageFilter, args) -> dict:
    size = listing.page_size(args.get("size"))
    with listing.walking_the_order(flt):  # the page and its counters in one walk
        page = listing.fetch_page(
            flt, size, after=args.get("after") or None, before=args.get("before") or None
        )
        counters = listing.counters_for(flt)
    nothing_yet = flt.is_empty and counters.total == 0 and not page.rows
    return {
        "flt": flt,
        "page": page,
        "counters": counters,
        "size": size,
        "size_args": {"size": size} if size != listing.DEFAULT_PAGE_SIZE else {},
        "page_sizes": listing.PAGE_SIZES,
        "statuses": STATUS_CHOICES,
        "webhook_urls": webhook_urls() if nothing_yet else None,
        "nothing_yet": nothing_yet,
        "error": None,
    }


def canonical_url(flt: MessageFilter, args) -> str:
    """The page's bookmarkable URL: only the filters in use, in a stable order."""
    extra = {k: args[k] for k in ("size", "after", "before") if args.get(k)}
    if extra.get("size") == str(listing.DEFAULT_PAGE_SIZE):
        extra.pop("size")
    return url_for("dashboard.messages", **flt.to_args(), **extra)


@bp.get("/")
def messages():
    """Messages, most recent activity first, filtered, paged and counted."""
    try:
        flt = MessageFilter.from_args(request.args)
        context = _messages_context(flt, request.args)
        status = 200
        canonical = canonical_url(flt, request.args)
        # A plain form submit sends every field, empty or not: keep the address short.
        if not wants_fragment() and any(v == "" for v in request.args.values()):
            return redirect(canonical, code=302)
    except FilterError as exc:
        context = {
            "flt": MessageFilter(),
            "page": None,
            "counters": None,
            "size": listing.DEFAULT_PAGE_SIZE,
            "size_args": {},
            "page_sizes": listing.PAGE_SIZES,
            "statuses": STATUS_CHOICES,
            "webhook_urls": None,
            "nothing_yet": False,
            "error": exc,
        }
        status = 400
        canonical = None
    if wants_fragment():
        # The filter form swaps only the results; links inside the panel swap the panel,
        # so the form's fields follow a removed filter.
        template = (
            "messages/_results.html"
            if request.headers.get("HX-Target") == "results"
            else "messages/_panel.html"
        )
        headers = {"HX-Push-Url": canonical} if status == 200 else {}
        return render_template(template, **context), status, headers
    return render_template("messages/index.html", **context), status


@bp.get("/messages/<path:request_id>")
def message(request_id: str):
    """One message: status, receipt timeline, replies and the raw bodies as received."""
    m = queries.get_message(request_id)
    if m is None:
        return render_template("message/missing.html", request_id=request_id), 404
    return render_template(
        "message/show.html",
        m=m,
        receipts=queries.receipts_of(request_id),
        replies=queries.replies_of(request_id),
        raw_bodies=queries.raw_bodies_of(request_id),
        code=describe_code(m.code) if m.code is not None else None,
    )


def rejected_page(after: int | None) -> tuple[list[RawBody], int | None]:
    """Refused and rejected bodies, newest first, keyset by id. One query per outcome, merged
    here: each walks the (outcome, id) index from its newest, where an IN over both would
    make SQLite read every stored body when few are rejected."""
    rows = []
    for outcome in REJECTED_OUTCOMES:
        stmt = db.select(RawBody).where(RawBody.outcome == outcome)
        if after is not None:
            stmt = stmt.where(RawBody.id < after)
        rows += db.session.execute(
            stmt.order_by(RawBody.id.desc()).limit(REJECTED_PAGE + 1)
        ).scalars()
    rows.sort(key=lambda raw: raw.id, reverse=True)
    more = len(rows) > REJECTED_PAGE
    rows = rows[:REJECTED_PAGE]
    return rows, (rows[-1].id if more else None)


def known_messages(rows: list[RawBody]) -> set[str]:
    """The requestIds of these bodies that name a message viberwatch knows (to link to it)."""
    ids = {raw.request_id for raw in rows if raw.request_id}
    if not ids:
        return set()
    stmt = db.select(Message.request_id).where(Message.request_id.in_(ids))
    return set(db.session.execute(stmt).scalars())


@bp.get("/rejected")
def rejected():
    """Bodies the webhooks refused or rejected, with the reason, the body and a reprocess button."""
    try:
        after = whole_number(request.args, "after", 1, MAX_ID)
        done = whole_number(request.args, "reprocessed", 1, MAX_ID)
    except FilterError as exc:
        return render_template(
            "rejected/index.html",
            rows=[],
            next_after=None,
            after=None,
            done=None,
            webhook_urls=None,
            known=set(),
            error=exc,
        ), 400
    rows, next_after = rejected_page(after)
    done_body = db.session.get(RawBody, done) if done else None
    return render_template(
        "rejected/index.html",
        rows=rows,
        next_after=next_after,
        after=after,
        done=done_body,
        webhook_urls=webhook_urls() if not rows and after is None else None,
        known=known_messages(rows),
        error=None,
    )


# The id stops at its column's range (a BIGINT): a larger one is no page (404), not a database
# error.
@bp.post("/rejected/<int(max=9223372036854775807):raw_id>/reprocess")
def reprocess(raw_id: int):
    """Run one stored body through validation again."""
    if db.session.get(RawBody, raw_id) is None:
        abort(404)
    result = reprocess_body(raw_id)
    audit.record("reprocess", f"body {raw_id}", {"outcome": result.outcome})
    raw = db.session.get(RawBody, raw_id)
    if wants_fragment():
        return render_template("rejected/_row.html", raw=raw, known=known_messages([raw]))
    return redirect(url_for("dashboard.rejected", reprocessed=raw_id), code=303)


def favicon():
    """The icon, for clients that ask for /favicon.ico rather than the page's <link rel="icon">."""
    return current_app.send_static_file("favicon.ico")


def register(app: Flask) -> None:
    app.add_url_rule("/favicon.ico", "favicon", favicon)
    app.register_blueprint(bp)
