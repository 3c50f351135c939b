"""Read side of the messages page: keyset pages and the counters above them."""

from __future__ import annotations

import base64
import binascii
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from flask import g, has_request_context
from sqlalchemy import func, text, tuple_

from ..records.models import Message, MessageTally, db
from .filters import STATUS_CHOICES, FilterError, MessageFilter, status_condition

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
# Counting a filter that the tally cannot answer stops here ("1000+"): a phone prefix of
# one digit must not make every page view count half the table.
COUNT_CAP = 1_000
# A phone or requestId prefix that matches more messages than this is filtered while
# walking the index of the order (or of the status); fewer are sought through the prefix's
# index and sorted. About where the two cost the same at a million messages (sqrt(page x
# messages)). SQLite's planner cannot know how many a prefix matches, nor PostgreSQL's
# before its statistics (right after a bulk load it sorted all of `phone=7`: 1.1 s at 1M).
BROAD_PREFIX = 5_000


def seek_prefix(flt: MessageFilter) -> bool:
    """Whether the prefixes of `flt` are sought through their index (see BROAD_PREFIX);
    probed once per request (the list and its counters ask both)."""
    if not flt.has_prefix:
        return True
    known = g.setdefault("seek_prefix", {}) if has_request_context() else {}
    if flt not in known:
        known[flt] = flt.prefixes_within(BROAD_PREFIX)
    return known[flt]


def _postgresql() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


def prefix_index(flt: MessageFilter) -> bool:
    """Whether the prefixes' index may serve the statements of `flt`: not when the prefix is
    broad, so that the planner walks the order's index (or the status's, or the code's)
    instead of every match of the prefix."""
    return seek_prefix(flt)


# A broad prefix's statements stop early (after a page, or at the count's cap), which only
# a plain walk down an index or the table does: not a sort, nor a bitmap of every match,
# nor parallel workers, which the planner chose without statistics. Nor compiled (JIT):
# priced as a walk of the whole index, the statement would be compiled first, for longer
# than the walk takes.
SETTINGS = {
    "enable_sort": "off",
    "enable_bitmapscan": "off",
    "max_parallel_workers_per_gather": "0",
    "jit": "off",
}
# One round trip each way.
WALK = "; ".join(f"SET LOCAL {name} = {value}" for name, value in SETTINGS.items())
UNWALK = "; ".join(f"SET LOCAL {name} TO DEFAULT" for name in SETTINGS)
# Set while the settings are on: a page and its counters read inside one walk (the view
# wraps both) set them once.
_walking: ContextVar[bool] = ContextVar("walking_the_order", default=False)


@contextmanager
def walking_the_order(flt: MessageFilter):
    """On PostgreSQL, while a broad prefix's page or count is read: no sort, no bitmap scan
    and no parallel scan, so that the planner walks an index (or the table) and stops early
    whatever its statistics say. Inside another walk, nothing more is set."""
    if _walking.get() or not _postgresql() or seek_prefix(flt):
        yield
        return
    db.session.execute(text(WALK))
    token = _walking.set(True)
    try:
        yield
    finally:
        _walking.reset(token)
    # Not after an error: the transaction is then rolled back, and its settings with it.
    db.session.execute(text(UNWALK))


def page_size(value: str | None) -> int:
    if not value:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(value)
    except ValueError:
        raise FilterError("size", f"must be one of {', '.join(map(str, PAGE_SIZES))}") from None
    if size not in PAGE_SIZES:
        raise FilterError("size", f"must be one of {', '.join(map(str, PAGE_SIZES))}")
    return size


def encode_cursor(at: datetime, key: str) -> str:
    """A keyset position (time, then a key) as an opaque URL-safe argument."""
    raw = f"{at.isoformat()}\n{key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str, name: str) -> tuple[datetime, str]:
    """The inverse of encode_cursor, in UTC; FilterError naming the argument otherwise."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        when, key = raw.split("\n", 1)
        at = datetime.fromisoformat(when)
        # NUL: PostgreSQL refuses it in text outright.
        if at.tzinfo is None or not key or "\x00" in key:
            raise ValueError
        return at.astimezone(UTC), key
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise FilterError(name, "not a page cursor of this list") from None


@dataclass
class Page:
    rows: list[Message]
    size: int
    next_cursor: str | None  # ?after= for the next (older) page
    prev_cursor: str | None  # ?before= for the previous (newer) page


def _key(m: Message) -> tuple:
    return (m.last_activity_at, m.request_id)


def fetch_page(
    flt: MessageFilter, size: int, after: str | None = None, before: str | None = None
) -> Page:
    """One page of matching messages, newest activity first, by keyset (never OFFSET)."""
    cursor = (
        decode_cursor(before, "before")
        if before
        else decode_cursor(after, "after")
        if after
        else None
    )
    backwards = before is not None
    order = (
        (Message.last_activity_at.asc(), Message.request_id.asc())
        if backwards
        else (Message.last_activity_at.desc(), Message.request_id.desc())
    )
    seek = []
    if cursor is not None:
        pair = tuple_(Message.last_activity_at, Message.request_id)
        seek.append(pair > cursor if backwards else pair < cursor)
    # One indexed query per status, merged here: an IN over several statuses would make
    # the database sort every matching row before it could take the first page.
    groups = [(s,) for s in flt.status] if len(flt.status) > 1 else [flt.status]
    found: list[Message] = []
    indexed = prefix_index(flt)
    with walking_the_order(flt):
        for group in groups:
            conds = flt.conditions(with_status=False, prefix_index=indexed)
            conds += [status_condition(group)] if group else []
            found.extend(
                db.session.execute(
                    db.select(Message).where(*conds, *seek).order_by(*order).limit(size + 1)
                ).scalars()
            )
    found.sort(key=_key, reverse=not backwards)
    more = len(found) > size
    rows = found[:size]
    if backwards:
        rows.reverse()
        has_prev, has_next = more, True
    else:
        has_prev, has_next = cursor is not None, more
    return Page(
        rows=rows,
        size=size,
        next_cursor=encode_cursor(*_key(rows[-1])) if rows and has_next else None,
        prev_cursor=encode_cursor(*_key(rows[0])) if rows and has_prev else None,
    )


@dataclass
class Counters:
    by_status: dict[str, int]
    capped: bool = False  # counted up to COUNT_CAP only

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def accepted(self) -> int:
        """Messages with any receipt: the platform has taken them."""
        return self.total - self.by_status.get("pending", 0)

    @property
    def delivered(self) -> int:
        return self.by_status.get("delivered", 0) + self.by_status.get("seen", 0)

    def _rate(self, n: int) -> float | None:
        if self.capped or not self.accepted:
            return None
        return n / self.accepted

    @property
    def delivery_rate(self) -> float | None:
        return self._rate(self.delivered)

    @property
    def seen_rate(self) -> float | None:
        return self._rate(self.by_status.get("seen", 0))


def _tally_counts(flt: MessageFilter) -> dict[str, int]:
    conds = flt.key_conditions(MessageTally)
    if flt.date_from:
        conds.append(MessageTally.day >= flt.date_from)
    if flt.date_to:
        conds.append(MessageTally.day <= flt.date_to)
    rows = db.session.execute(
        db.select(MessageTally.status, func.sum(MessageTally.n))
        .where(*conds)
        .group_by(MessageTally.status)
    ).all()
    return {s: int(n or 0) for s, n in rows}


def counters_for(flt: MessageFilter) -> Counters:
    """Messages per status for a filter; from the tally whenever the filter allows it,
    otherwise counted from the messages up to COUNT_CAP."""
    if flt.by_day_and_key:
        counts = _tally_counts(flt)
        capped = False
    else:
        status = func.coalesce(Message.status, "pending").label("s")
        conds = flt.conditions(prefix_index=prefix_index(flt))
        sample = db.select(status).where(*conds).limit(COUNT_CAP + 1).subquery()
        with walking_the_order(flt):
            rows = db.session.execute(
                db.select(sample.c.s, func.count()).group_by(sample.c.s)
            ).all()
        counts = {s: n for s, n in rows}
        capped = sum(counts.values()) > COUNT_CAP
    return Counters(by_status={s: counts.get(s, 0) for s in STATUS_CHOICES}, capped=capped)
