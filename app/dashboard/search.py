"""Text search: which messages (by their registered text) and which replies have some words,
newest first, on a page of their own (`/search?q=refund`) or as JSON."""

from __future__ import annotations

from flask import Blueprint, jsonify, render_template, request, url_for

from ..errors import error_response, wants_json
from ..records import search
from .filters import FilterError, whole_number

bp = Blueprint("search", __name__)

PAGE = 20  # of each kind; a kind's own pages (kind=replies|messages) are as long
KINDS = ("replies", "messages")
MAX_ID = 2**63 - 1


class SearchArgsError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _found(terms, kind: str | None, after):
    """Each kind asked for: (hits, the next page's cursor or None)."""
    out = {}
    if kind in (None, "replies"):
        rows = search.replies(terms, after if kind else None, PAGE + 1)
        out["replies"] = (rows[:PAGE], rows[PAGE - 1].id if len(rows) > PAGE else None)
    if kind in (None, "messages"):
        rows = search.messages(terms, after if kind else None, PAGE + 1)
        out["messages"] = (rows[:PAGE], rows[PAGE - 1].cursor if len(rows) > PAGE else None)
    return out


def _args():
    """(terms, kind, after) of the request, or SearchArgsError naming the bad argument."""
    try:
        terms = search.parse(request.args.get("q"))
    except search.QueryError as exc:
        raise SearchArgsError("q", str(exc)) from None
    kind = request.args.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise SearchArgsError("kind", f"must be replies or messages, got {kind[:40]!r}")
    after = request.args.get("after") or None
    if after is not None and kind is None:
        raise SearchArgsError("after", "a cursor needs kind=replies or kind=messages")
    if after is not None and kind == "replies":
        try:
            after = whole_number(request.args, "after", 1, MAX_ID)
        except FilterError as exc:
            raise SearchArgsError("after", exc.reason) from None
    if after is not None and kind == "messages" and len(after) > 200:
        raise SearchArgsError("after", "not a cursor of this list")
    return terms, kind, after


def _json(q: str, found: dict, kind: str | None):
    body = {"query": q}
    if "replies" in found:
        hits, more = found["replies"]
        body["replies"] = [
            {
                "id": r.id,
                "phone": r.phone,
                "receivedAt": r.received_at.isoformat().replace("+00:00", "Z"),
                "text": r.text,
                "traceRequestId": r.trace_request_id,
                "thread": url_for("conversations.thread", phone=r.phone),
            }
            for r in hits
        ]
        body["nextReplies"] = (
            url_for("search.index", q=q, kind="replies", after=more) if more else None
        )
    if "messages" in found:
        hits, more = found["messages"]
        body["messages"] = [
            {
                "requestId": m.request_id,
                "phone": m.phone,
                "status": m.status or "pending",
                "text": m.text,
                "createdAt": m.created_at.isoformat().replace("+00:00", "Z"),
                "url": url_for("dashboard.message", request_id=m.request_id),
            }
            for m in hits
        ]
        body["nextMessages"] = (
            url_for("search.index", q=q, kind="messages", after=more) if more else None
        )
    return jsonify(body)


@bp.get("/search")
def index():
    """Replies and messages whose text has every word of `q`, newest first."""
    q = request.args.get("q")
    if q is None and not wants_json():
        return render_template("search/index.html", q="", terms=(), found=None, error=None)
    try:
        terms, kind, after = _args()
        found = _found(terms, kind, after)
    except (SearchArgsError, search.CursorError) as exc:
        field, reason = (
            (exc.field, exc.reason) if isinstance(exc, SearchArgsError) else ("after", str(exc))
        )
        if wants_json():
            return error_response(400, field, reason)
        return render_template(
            "search/index.html", q=q or "", terms=(), found=None, error=f"{field}: {reason}"
        ), 400
    if wants_json():
        return _json(q, found, kind)
    return render_template(
        "search/index.html",
        q=q,
        terms=terms,
        kind=kind,
        after=after,
        found=found,
        snippet=search.snippet,
        shown=search.describe(terms),
        error=None,
    )
