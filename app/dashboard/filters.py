"""Message filters: query arguments in, one dataclass out, used by the messages page, its
counters, the CSV export, analytics and live pushes (which ask `matches` of a new row)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, literal, literal_column, or_

from ..core.errors import FieldError
from ..core.payloads import COERCIONS, Invalid, parse_tags
from ..core.status import STATUSES
from ..records.derivation import tags_of
from ..records.models import Message, MessageTag, db

# "pending": a message we know of (registered, or answered) with no receipt yet.
STATUS_CHOICES = ("pending",) + STATUSES
MAX_TEXT = 128
# ASCII digits only: int() would also take "1_000" and other scripts' digits.
INTEGER_RE = re.compile(r"\A[+-]?[0-9]+\Z")
# `anomaly=`: any anomaly; or a kind of them: "coerced" (a body read by coercion, any of
# payloads.COERCIONS), "contradiction" (contradicting receipts: "... beside ..."), or any
# other text, found in the message's anomalies (case-insensitive), e.g. "sendTime in ISO".
ANOMALY_ANY = ("1", "true", "on", "yes")
ANOMALY_NONE = ("", "0", "false", "off", "no")
ANOMALY_KINDS = {
    "coerced": COERCIONS,
    "contradiction": (" beside ",),
}


class FilterError(FieldError):
    """A query argument that cannot be used; names the argument."""


def _text(args: Mapping, name: str) -> str | None:
    raw = args.get(name)
    value = "" if raw is None else str(raw).strip()
    if len(value) > MAX_TEXT:
        raise FilterError(name, f"at most {MAX_TEXT} characters")
    # NUL cannot be sent to PostgreSQL at all; no control character belongs in a filter.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise FilterError(name, "contains a control character")
    return value or None


def _date(args: Mapping, name: str) -> date | None:
    value = _text(args, name) or ""
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise FilterError(name, f"must be a date like 2024-05-31, got {value!r}") from None
    if day == date.max:  # a day ends where the next begins, and this one has no next
        raise FilterError(name, f"must be before {date.max.isoformat()}")
    return day


def whole_number(args: Mapping, name: str, low: int, high: int) -> int | None:
    """An optional decimal integer argument within [low, high], else FilterError naming it."""
    text = _text(args, name)
    if text is None:
        return None
    if not INTEGER_RE.match(text):
        raise FilterError(name, f"must be a whole number, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise FilterError(name, f"must be from {low} to {high}")
    return value


def _getlist(args: Any, name: str) -> list[str]:
    if hasattr(args, "getlist"):
        return args.getlist(name)
    value = args.get(name)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def prefix_condition(column, value: str):
    """`column` starts with `value`: a range the index can seek, plus LIKE for exactness."""
    if ord(value[-1]) >= 0x10FFFF:  # no character above it to bound the range with
        return and_(column >= value, column.startswith(value, autoescape=True))
    upper = value[:-1] + chr(ord(value[-1]) + 1)
    return and_(column >= value, column < upper, column.startswith(value, autoescape=True))


def not_indexed(column):
    """The same value, but no SQLite index serves it (`||` with an empty text changes no
    value): its planner then walks the index of another condition or of the ORDER BY."""
    return column.op("||")(literal_column("''"))


def day_start(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


@dataclass(frozen=True)
class MessageFilter:
    """What the operator asked to see. Dates are UTC days of the message's last activity."""

    status: tuple[str, ...] = ()
    phone: str | None = None  # exact number or its beginning
    code: int | None = None
    q: str | None = None  # requestId or its beginning
    date_from: date | None = None
    date_to: date | None = None  # inclusive
    anomaly: bool = False
    # With `anomaly`: only messages with this kind of anomaly (ANOMALY_KINDS), or with this
    # text among their anomalies (lower-case).
    anomaly_kind: str | None = None
    tags: tuple[str, ...] = ()  # the message has every one of them
    appkey: str | None = None  # exactly

    @classmethod
    def from_args(cls, args: Mapping) -> MessageFilter:
        """Parse query arguments; raises FilterError naming the first bad one."""
        statuses = []
        for value in _getlist(args, "status"):
            for part in value.split(","):
                part = part.strip().lower()
                if not part:
                    continue
                if part not in STATUS_CHOICES:
                    raise FilterError(
                        "status", f"must be one of {', '.join(STATUS_CHOICES)}, got {part!r}"
                    )
                if part not in statuses:
                    statuses.append(part)
        # Codes are 32-bit, as the webhook takes them.
        code = whole_number(args, "code", -(2**31), 2**31 - 1)
        phone = _text(args, "phone")
        if phone is not None:
            phone = "".join(phone.split()) or None
        date_from, date_to = _date(args, "from"), _date(args, "to")
        if date_from and date_to and date_from > date_to:
            raise FilterError("to", "must not be before from")
        anomaly_arg = (_text(args, "anomaly") or "").lower()
        anomaly = anomaly_arg not in ANOMALY_NONE
        anomaly_kind = None if anomaly_arg in ANOMALY_ANY + ANOMALY_NONE else anomaly_arg
        try:
            tags = parse_tags(",".join(_getlist(args, "tag")) or None, "tag")
        except Invalid as exc:
            raise FilterError("tag", exc.reason) from None
        # Keep the page's own order of statuses, whatever order the URL gave.
        ordered = tuple(s for s in STATUS_CHOICES if s in statuses)
        return cls(
            status=ordered,
            phone=phone,
            code=code,
            q=_text(args, "q"),
            date_from=date_from,
            date_to=date_to,
            anomaly=anomaly,
            anomaly_kind=anomaly_kind,
            tags=tags,
            appkey=_text(args, "appkey"),
        )

    @property
    def is_empty(self) -> bool:
        return self == MessageFilter()

    def to_args(self) -> dict:
        """Query arguments for url_for; the inverse of from_args."""
        args: dict[str, Any] = {}
        if self.status:
            args["status"] = list(self.status)
        for name, value in (("phone", self.phone), ("code", self.code), ("q", self.q)):
            if value is not None:
                args[name] = value
        if self.date_from:
            args["from"] = self.date_from.isoformat()
        if self.date_to:
            args["to"] = self.date_to.isoformat()
        if self.anomaly:
            args["anomaly"] = self.anomaly_kind or "1"
        if self.tags:
            args["tag"] = list(self.tags)
        if self.appkey is not None:
            args["appkey"] = self.appkey
        return args

    def chips(self) -> list[tuple[str, MessageFilter]]:
        """Each active filter as (label, the filter without it), to show and remove one by one."""
        out = [
            (f"status: {s}", replace(self, status=tuple(x for x in self.status if x != s)))
            for s in self.status
        ]
        if self.phone is not None:
            out.append((f"phone: {self.phone}", replace(self, phone=None)))
        if self.code is not None:
            out.append((f"code: {self.code}", replace(self, code=None)))
        if self.q is not None:
            out.append((f"id: {self.q}", replace(self, q=None)))
        if self.date_from:
            out.append((f"from: {self.date_from.isoformat()}", replace(self, date_from=None)))
        if self.date_to:
            out.append((f"to: {self.date_to.isoformat()}", replace(self, date_to=None)))
        if self.anomaly and self.anomaly_kind:
            out.append(
                (f"anomaly: {self.anomaly_kind}", replace(self, anomaly=False, anomaly_kind=None))
            )
        elif self.anomaly:
            out.append(("anomalies only", replace(self, anomaly=False)))
        out += [
            (f"tag: {t}", replace(self, tags=tuple(x for x in self.tags if x != t)))
            for t in self.tags
        ]
        if self.appkey is not None:
            out.append((f"appkey: {self.appkey}", replace(self, appkey=None)))
        return out

    def conditions(self, *, with_status: bool = True, prefix_index: bool = True) -> list:
        """SQL conditions of the filter. Without `prefix_index`, no index serves the phone
        and requestId prefixes (see `prefixes_within`)."""
        conds = []
        seek = (lambda column: column) if prefix_index else not_indexed
        if with_status and self.status:
            conds.append(status_condition(self.status))
        if self.phone is not None:
            conds.append(prefix_condition(seek(Message.phone), self.phone))
        if self.code is not None:
            conds.append(Message.code == self.code)
        if self.q is not None:
            conds.append(prefix_condition(seek(Message.request_id), self.q))
        if self.date_from:
            conds.append(Message.last_activity_at >= day_start(self.date_from))
        if self.date_to:
            conds.append(Message.last_activity_at < day_start(self.date_to + timedelta(days=1)))
        if self.anomaly:
            conds.append(Message.anomaly.is_(True))
        if self.anomaly and self.anomaly_kind:
            conds.append(
                or_(
                    *(
                        func.lower(Message.anomalies).contains(part.lower(), autoescape=True)
                        for part in self._anomaly_texts()
                    )
                )
            )
        for tag in self.tags:
            tagged = db.select(MessageTag.request_id).where(MessageTag.tag == tag)
            conds.append(Message.request_id.in_(tagged))
        if self.appkey is not None:
            conds.append(Message.appkey == self.appkey)
        return conds

    @property
    def by_key_only(self) -> bool:
        """Whether only status, code and anomaly are asked for: what the counters' tally and
        the analytics rollups are keyed by (each with "pending" for no status and -1 for no code)."""
        return (
            self.phone is None
            and self.q is None
            and self.date_from is None
            and self.date_to is None
            and not self.tags
            and self.appkey is None
            and self.anomaly_kind is None
        )

    @property
    def by_day_and_key(self) -> bool:
        """Whether the counters' tally (per UTC day of the last activity, status, code and
        anomaly) answers this filter exactly: only those, and the days, are asked for."""
        return replace(self, date_from=None, date_to=None).by_key_only

    def key_conditions(self, table) -> list:
        """Conditions on the status, code and anomaly columns of a tally or rollup table."""
        conds = []
        if self.status:
            conds.append(table.status.in_(self.status))
        if self.code is not None:
            conds.append(table.code == self.code)
        if self.anomaly:
            conds.append(table.anomaly.is_(True))
        return conds

    @property
    def has_prefix(self) -> bool:
        return self.phone is not None or self.q is not None

    def prefixes_within(self, bound: int) -> bool:
        """Whether the phone and requestId prefixes match at most `bound` messages, probed
        through their index (at most bound + 1 index entries read). SQLite's planner has no
        idea how many a prefix matches: a narrow one is best sought through its index, a
        broad one (a country code) filtered while walking the index of the order."""
        probe = (
            db.select(literal(1))
            .select_from(Message)
            .where(*MessageFilter(phone=self.phone, q=self.q).conditions())
            .limit(bound + 1)
            .subquery()
        )
        return db.session.execute(db.select(func.count()).select_from(probe)).scalar() <= bound

    def _anomaly_texts(self) -> tuple[str, ...]:
        """What a message's anomalies contain, one of, to be of the kind asked for."""
        return ANOMALY_KINDS.get(self.anomaly_kind, (self.anomaly_kind,))

    def query(self) -> Select:
        """SELECT of the matching messages, most recent activity first."""
        return (
            db.select(Message)
            .where(*self.conditions())
            .order_by(Message.last_activity_at.desc(), Message.request_id.desc())
        )

    def matches(self, m: Message) -> bool:
        """Would `m` be on a page with this filter? Same rules as `query`, in Python."""
        if self.status and (m.status or "pending") not in self.status:
            return False
        if self.phone is not None and not (m.phone or "").startswith(self.phone):
            return False
        if self.code is not None and m.code != self.code:
            return False
        if self.q is not None and not m.request_id.startswith(self.q):
            return False
        when = m.last_activity_at
        if self.date_from and (when is None or when < day_start(self.date_from)):
            return False
        if self.date_to and (when is None or when >= day_start(self.date_to + timedelta(days=1))):
            return False
        if self.anomaly and not m.anomaly:
            return False
        if self.anomaly and self.anomaly_kind:
            found = (m.anomalies or "").lower()
            if not any(part.lower() in found for part in self._anomaly_texts()):
                return False
        if self.tags and not tags_of(m.tags).issuperset(self.tags):
            return False
        if self.appkey is not None and m.appkey != self.appkey:
            return False
        return True


def status_condition(statuses) -> Any:
    """Status among `statuses`, where "pending" stands for no status yet."""
    named = [s for s in statuses if s != "pending"]
    conds = []
    if named:
        conds.append(Message.status.in_(named) if len(named) > 1 else Message.status == named[0])
    if "pending" in statuses:
        conds.append(Message.status.is_(None))
    return conds[0] if len(conds) == 1 else or_(*conds)
