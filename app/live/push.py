"""What a live push carries: HTML rendered from the pages' own partials, per page.

A `PushBatch` is a run of activity rows with the current state of what they touched; it is
shared by every socket of the process and renders each fragment at most once. `compose`
turns the batches waiting for one socket into one message for its page: one row update per
message whatever the number of events, new rows only where the page's filter wants them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from flask import render_template
from markupsafe import Markup
from werkzeug.datastructures import MultiDict

from ..dashboard.filters import FilterError, MessageFilter
from ..dashboard.listing import counters_for
from ..dashboard.rendered import message_row
from ..records.models import Activity, Contact, Message, Receipt, Reply, db

PAGES = ("messages", "conversations", "thread", "message", "other")
MAX_ON_PAGE = 1000
# Beyond this many events since its cursor a page reloads instead of replaying them.
MAX_CATCH_UP = 50_000
CHUNK = 500
FEED_PREPARE = 200


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    request_id: str | None
    phone: str | None
    status: str | None
    raw_id: int | None
    created_at: datetime
    summary: str | None

    @classmethod
    def of(cls, a: Activity) -> Event:
        return cls(a.id, a.kind, a.request_id, a.phone, a.status, a.raw_id, a.created_at, a.summary)


@dataclass
class Page:
    """The page a socket serves, as its hello told: kind, filter and what it shows."""

    kind: str = "other"
    filter: MessageFilter = field(default_factory=MessageFilter)
    inserts: bool = True  # a later page of a list takes no new rows at its top
    phone: str | None = None
    request_id: str | None = None
    # The rows the page may show (request ids, or phones on the conversations page), oldest
    # first. The page drops rows past its size by itself; an update for a row it no longer
    # has is ignored there, so this only needs to be a bounded superset.
    on_page: dict = field(default_factory=dict)
    feed: bool = False

    def show(self, key: str) -> None:
        """Note a row the page now shows (at its top), forgetting the oldest past the cap."""
        self.on_page.pop(key, None)
        self.on_page[key] = None
        while len(self.on_page) > MAX_ON_PAGE:
            del self.on_page[next(iter(self.on_page))]

    @property
    def filter_key(self) -> str:
        return json.dumps(self.filter.to_args(), sort_keys=True)


class HelloError(ValueError):
    pass


def parse_hello(text: Any) -> tuple[int | None, Page]:
    """The first message of a socket: {"cursor", "page", "filters", "phone", "requestId",
    "rows", "feed"}. Raises HelloError naming the bad field."""
    try:
        data = json.loads(text) if isinstance(text, (str, bytes)) else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise HelloError("hello: must be a JSON object")
    cursor = data.get("cursor")
    if cursor is not None and (
        not isinstance(cursor, int) or isinstance(cursor, bool) or cursor < 0
    ):
        raise HelloError("cursor: must be a whole number of at least 0")
    kind = data.get("page") or "other"
    if kind not in PAGES:
        raise HelloError(f"page: must be one of {', '.join(PAGES)}")
    page = Page(kind=kind, feed=bool(data.get("feed")))
    query = data.get("filters") or ""
    if not isinstance(query, str) or len(query) > 2000:
        raise HelloError("filters: must be a query string")
    args = MultiDict(parse_qsl(query.lstrip("?"), keep_blank_values=True))
    try:
        page.filter = MessageFilter.from_args(args)
    except FilterError as exc:
        raise HelloError(f"filters: {exc}") from None
    page.inserts = not (args.get("after") or args.get("before"))
    for name, attr in (("phone", "phone"), ("requestId", "request_id")):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 128):
            raise HelloError(f"{name}: must be a string of 1 to 128 characters")
        setattr(page, attr, value)
    if kind == "thread" and not page.phone:
        raise HelloError("phone: required on a thread page")
    if kind == "message" and not page.request_id:
        raise HelloError("requestId: required on a message page")
    rows = data.get("rows") or []
    if (
        not isinstance(rows, list)
        or len(rows) > MAX_ON_PAGE
        or not all(isinstance(r, str) for r in rows)
    ):
        raise HelloError(f"rows: must be a list of at most {MAX_ON_PAGE} request ids")
    # Listed top first: the newest row goes last.
    page.on_page = dict.fromkeys(reversed(rows))
    return cursor, page


def _chunks(items: list, size: int = CHUNK) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class PushBatch:
    """Activity rows with the state they left behind; fragments rendered once, on demand."""

    def __init__(self, events: list[Event], messages: dict[str, Message]):
        self.events = events
        self.messages = messages
        self.last_id = events[-1].id if events else 0
        self._cache: dict[tuple, Any] = {}
        self._pending: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, events: list[Event]) -> PushBatch:
        """Read the messages the events touched (in the caller's app context)."""
        ids = sorted({e.request_id for e in events if e.request_id})
        messages: dict[str, Message] = {}
        for chunk in _chunks(ids):
            for m in db.session.execute(
                db.select(Message).where(Message.request_id.in_(chunk))
            ).scalars():
                messages[m.request_id] = m
        # Detached copies that stay readable after the session is gone.
        db.session.expunge_all()
        return cls(events, messages)

    def _once(self, key: tuple, make: Callable[[], Any]) -> Any:
        """Compute a fragment once per batch; concurrent askers wait for the first."""
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = threading.Event()
                mine = True
            else:
                mine = False
        if not mine:
            pending.wait()
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            return make()  # the first asker failed; try on our own
        try:
            value = make()
            if isinstance(value, str):
                # Rendered by Jinja with autoescaping: safe to place inside the push as is.
                value = Markup(value)
            with self._lock:
                self._cache[key] = value
            return value
        finally:
            with self._lock:
                self._pending.pop(key, None)
            pending.set()

    def prepare(self, pages: list[Page]) -> None:
        """Render ahead what the current sockets will ask for, on the tailer's thread."""
        kinds = {p.kind for p in pages}
        if "messages" in kinds:
            for rid in self.messages:
                self.row(rid)
            for p in pages:
                if p.kind == "messages":
                    self.counters(p.filter, p.filter_key)
        if any(p.feed for p in pages):
            for e in self.events[-FEED_PREPARE:]:
                self.feed_item(e)

    def row(self, request_id: str) -> str:
        m = self.messages[request_id]
        return self._once(("row", request_id), lambda: message_row(m))

    def counters(self, flt: MessageFilter, key: str) -> str:
        return self._once(
            ("counters", key),
            lambda: render_template("partials/_counters.html", counters=counters_for(flt), flt=flt),
        )

    def feed_item(self, ev: Event) -> str:
        return self._once(
            ("feed", ev.id),
            lambda: render_template(
                "partials/_feed_item.html", a=ev, m=self.messages.get(ev.request_id or "")
            ),
        )

    def receipt_item(self, ev: Event) -> str | None:
        def make():
            r = db.session.execute(db.select(Receipt).where(Receipt.raw_id == ev.raw_id)).scalar()
            return render_template("partials/_timeline_item.html", r=r) if r is not None else None

        return self._once(("receipt", ev.id), make)

    def reply_item(self, ev: Event) -> str | None:
        def make():
            r = db.session.execute(db.select(Reply).where(Reply.raw_id == ev.raw_id)).scalar()
            return (
                render_template("partials/_thread_item.html", r=r, m=None)
                if r is not None
                else None
            )

        return self._once(("reply", ev.id), make)

    def frames_for(self, push: Push) -> list[str]:
        """The frames of a push, rendered once for every socket that gets the same push."""
        key = (
            "frames",
            push.cursor,
            tuple(push.rows.items()),
            push.counters,
            tuple(push.feed),
            tuple(push.items.items()),
            tuple(push.contacts.items()),
        )
        return self._once(key, push.frames)

    def contact_row(self, phone: str) -> str | None:
        """A phone's row of the conversations list, as the summary table has it now."""

        def make():
            contact = self._contacts().get(phone)
            if contact is None:
                return None
            return render_template("partials/_contact_row.html", c=contact)

        return self._once(("contact", phone), make)

    def _contacts(self) -> dict[str, Contact]:
        def load():
            phones = sorted(
                {e.phone for e in self.events if e.phone}
                | {m.phone for m in self.messages.values() if m.phone}
            )
            found: dict[str, Contact] = {}
            for chunk in _chunks(phones):
                for c in db.session.execute(
                    db.select(Contact).where(Contact.phone.in_(chunk))
                ).scalars():
                    found[c.phone] = c
            db.session.expunge_all()
            return found

        return self._once(("contacts",), load)

    def outbound_item(self, request_id: str) -> str:
        m = self.messages[request_id]
        return self._once(
            ("out", request_id), lambda: render_template("partials/_thread_item.html", m=m, r=None)
        )


@dataclass
class Push:
    """One message for one socket, assembled from one or more batches."""

    cursor: int
    rows: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (mode, html)
    counters: str | None = None
    feed: list[str] = field(default_factory=list)
    items: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (mode, html)
    contacts: dict[str, tuple[str, str]] = field(default_factory=dict)  # phone -> (mode, html)

    def frames(self, extra: dict | None = None) -> list[str]:
        """The WebSocket messages of this push, the one carrying the cursor last."""
        meta = {"cursor": self.cursor, **(extra or {})}
        modes = {mode for mode, _ in self.rows.values()}
        out = [
            render_template("partials/_live_push.html", part=part, push=self)
            for part, wanted in (
                ("updates", {"update", "leave"}),
                ("inserts", {"insert"}),
                ("contacts", {"top", "update"}),
            )
            if wanted & (modes if part != "contacts" else {m for m, _ in self.contacts.values()})
        ]
        out.append(render_template("partials/_live_push.html", part="rest", meta=meta, push=self))
        return out


def compose(page: Page, cursor: int, batches: list[PushBatch], feed_cap: int) -> Push:
    """Fold the batches into one push for `page`, skipping events at or before `cursor`."""
    push = Push(cursor=cursor)
    for batch in batches:
        events = [e for e in batch.events if e.id > push.cursor]
        if not events:
            continue
        push.cursor = events[-1].id
        if page.kind == "messages":
            _messages_page(page, batch, events, push)
        elif page.kind == "conversations":
            _conversations_page(page, batch, events, push)
        elif page.kind == "thread":
            _thread_page(page, batch, events, push)
        elif page.kind == "message":
            _message_page(page, batch, events, push)
        if page.feed:
            push.feed.extend(batch.feed_item(e) for e in events)
    if len(push.feed) > feed_cap:
        push.feed = push.feed[-feed_cap:]
    return push


def _touched(batch: PushBatch, events: list[Event]) -> list[str]:
    seen: dict[str, None] = {}
    for e in events:
        if e.request_id and e.request_id in batch.messages:
            seen.pop(e.request_id, None)
            seen[e.request_id] = None
    return list(seen)


def _put(store: dict, key: str, mode: str, html: str) -> None:
    # A row not yet on the page stays an insert even when a later batch updates it.
    old = store.pop(key, None)
    if old is not None and old[0] == "insert":
        mode = "insert"
    store[key] = (mode, html)


def _messages_page(page: Page, batch: PushBatch, events: list[Event], push: Push) -> None:
    for rid in _touched(batch, events):
        matches = page.filter.matches(batch.messages[rid])
        if rid in page.on_page:
            if matches:
                _put(push.rows, rid, "update", batch.row(rid))
                continue
            # No longer what the page lists (a failed message now delivered, say): it leaves.
            del page.on_page[rid]
            old = push.rows.pop(rid, None)
            if old is None or old[0] != "insert":
                push.rows[rid] = ("leave", batch.row(rid))
        elif page.inserts and matches:
            page.show(rid)
            _put(push.rows, rid, "insert", batch.row(rid))
    push.counters = batch.counters(page.filter, page.filter_key)


def _conversations_page(page: Page, batch: PushBatch, events: list[Event], push: Push) -> None:
    """A phone with new activity goes to the top of the first page (the list is by latest
    activity); on a later page its row changes where it stands."""
    prefix = page.filter.phone
    for phone in _touched_phones(batch, events):
        if prefix and not phone.startswith(prefix):
            continue
        if page.inserts:
            page.show(phone)
            mode = "top"
        elif phone in page.on_page:
            mode = "update"
        else:
            continue
        html = batch.contact_row(phone)
        if html:
            push.contacts.pop(phone, None)
            push.contacts[phone] = (mode, html)


def _touched_phones(batch: PushBatch, events: list[Event]) -> list[str]:
    seen: dict[str, None] = {}
    for e in events:
        m = batch.messages.get(e.request_id or "")
        phone = e.phone or (m.phone if m is not None else None)
        if phone:
            seen.pop(phone, None)
            seen[phone] = None
    return list(seen)


def _thread_page(page: Page, batch: PushBatch, events: list[Event], push: Push) -> None:
    for e in events:
        if e.kind == "reply" and e.phone == page.phone:
            html = batch.reply_item(e)
            if html:
                push.items[f"reply-{e.id}"] = ("append", html)
    for rid in _touched(batch, events):
        if batch.messages[rid].phone != page.phone:
            continue
        mode = "update" if rid in page.on_page else "append"
        page.show(rid)
        _put(push.items, f"out-{rid}", mode, batch.outbound_item(rid))


def _message_page(page: Page, batch: PushBatch, events: list[Event], push: Push) -> None:
    for e in events:
        if e.request_id != page.request_id:
            continue
        html = (
            batch.receipt_item(e)
            if e.kind == "receipt"
            else batch.reply_item(e)
            if e.kind == "reply"
            else None
        )
        if html:
            push.items[f"{e.kind if e.kind == 'receipt' else 'message-reply'}-{e.id}"] = (
                "append",
                html,
            )


def catch_up(page: Page, after: int, upto: int, feed_cap: int) -> tuple[Push | None, bool]:
    """What a page missed between its cursor and `upto`, read from the database.

    Returns (push, reload): reload is True when so much was missed that reloading the page
    is cheaper than replaying it.
    """
    if upto <= after:
        return None, False
    if upto - after > MAX_CATCH_UP:
        return None, True
    batches = []
    cursor = after
    while cursor < upto:
        rows = (
            db.session.execute(
                db.select(Activity)
                .where(Activity.id > cursor, Activity.id <= upto)
                .order_by(Activity.id)
                .limit(5000)
            )
            .scalars()
            .all()
        )
        if not rows:
            break
        events = [Event.of(a) for a in rows]
        batches.append(PushBatch.load(events))
        cursor = events[-1].id
    push = compose(page, after, batches, feed_cap)
    push.cursor = max(push.cursor, upto)
    return push, False
