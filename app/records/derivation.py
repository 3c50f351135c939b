"""The one derivation of a message's columns from what is recorded about it.

Ingest, `rebuild`, `seed` and the simulator's expected state all call `message_columns`
with the message's receipts, replies and registration; nothing else decides a column.
No Flask and no database here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import lru_cache

from ..core import payloads
from ..core.status import ReceiptFact, State, fold

# The columns message_columns returns, in a fixed order (one UPDATE shape for all).
COLUMNS = (
    "phone",
    "registered_at",
    "text",
    "appkey",
    "function_type",
    "rate_type",
    "tags",
    "status",
    "code",
    "code_message",
    "send_time_raw",
    "send_time",
    "accepted_at",
    "delivered_at",
    "seen_at",
    "failed_at",
    "expired_at",
    "cost_currency",
    "cost_local_price",
    "cost_original_price",
    "cost_rate_type",
    "anomalies",
    "anomaly",
    "receipts_count",
    "replies_count",
    "last_reply_text",
    "last_activity_at",
)


@dataclass(frozen=True)
class ReplyFact:
    """What a message's columns need of one of its replies."""

    phone: str
    received_at: datetime
    order: int  # its raw body's id: breaks ties between replies received in the same instant
    text: str | None = None
    file_name: str | None = None
    media: str | None = None
    coerced: tuple[str, ...] = ()  # what was read by coercion (payloads.COERCIONS)


@dataclass(frozen=True)
class Registration:
    """The sending system's word on a message: the latest registration's fields, first
    registered at, and the tags of every registration (tags only grow)."""

    phone: str
    text: str | None
    appkey: str | None
    function_type: str | None
    registered_at: datetime
    rate_type: str | None = None
    tags: frozenset[str] = frozenset()

    def same_fields(self, rg: payloads.RegistrationIn) -> bool:
        """The registration says nothing this one does not (its tags among these)."""
        return (self.phone, self.text, self.appkey, self.function_type, self.rate_type) == (
            rg.phone,
            rg.text,
            rg.appkey,
            rg.function_type,
            rg.rate_type,
        ) and self.tags.issuperset(rg.tags)

    def then(self, rg: payloads.RegistrationIn, at: datetime) -> Registration:
        """After a later registration `rg`, received `at`: its fields, the tags of both."""
        return Registration(
            rg.phone,
            rg.text,
            rg.appkey,
            rg.function_type,
            self.registered_at if self.registered_at <= at else at,
            rg.rate_type,
            self.tags | frozenset(rg.tags),
        )

    @classmethod
    def first(cls, rg: payloads.RegistrationIn, at: datetime) -> Registration:
        return cls(
            rg.phone, rg.text, rg.appkey, rg.function_type, at, rg.rate_type, frozenset(rg.tags)
        )


def tags_text(tags: frozenset[str] | None) -> str | None:
    """A message's tags as its `tags` column keeps them: sorted, comma-separated."""
    return ",".join(sorted(tags)) if tags else None


def tags_of(text: str | None) -> frozenset[str]:
    return frozenset(text.split(",")) if text else frozenset()


def receipt_fact(rc: payloads.ReceiptIn, received_at: datetime) -> ReceiptFact:
    cost = rc.cost
    return ReceiptFact(
        status=rc.status,
        code=rc.code,
        message=rc.message,
        received_at=received_at,
        key=rc.content_hash,
        send_time_raw=rc.send_time_raw,
        cost=(cost.currency, cost.local_price, cost.original_price, cost.rate_type)
        if cost
        else None,
        coerced=rc.coerced,
    )


def reply_fact(rp: payloads.ReplyIn, received_at: datetime, order: int) -> ReplyFact:
    return ReplyFact(rp.phone, received_at, order, rp.text, rp.file_name, rp.media, rp.coerced)


def coerced_text(coerced: tuple[str, ...]) -> str | None:
    """A receipt's or reply's coercions as its `coerced` column keeps them."""
    return "; ".join(coerced) or None


def coerced_of(text: str | None) -> tuple[str, ...]:
    return tuple(text.split("; ")) if text else ()


def message_anomalies(
    state: State, receipts: Iterable[ReceiptFact], replies: Iterable[ReplyFact]
) -> tuple[str, ...]:
    """A message's anomalies: its contradicting statuses (status.anomalies), then every
    coercion its receipts and replies were read with, each once, in payloads.COERCIONS order."""
    given = {n for r in receipts for n in r.coerced} | {n for r in replies for n in r.coerced}
    return state.anomalies + payloads.coerced(given)


@lru_cache(maxsize=4096)
def _send_time(raw: str, zone: tzinfo) -> datetime:
    # A campaign's receipts share a handful of send times.
    return payloads.parse_send_time(raw, zone)


def reply_preview(text: str | None, file_name: str | None, media: str | None) -> str:
    """How a reply is summarised in lists and the live feed."""
    if text is not None:
        return text[:200]
    return f"[media] {file_name or media or ''}"[:200]


def outbound_preview(text: str | None) -> str | None:
    """How a registered (sent) message is summarised in a phone's thread list."""
    return f"→ {text}"[:200] if text else None


def message_columns(
    receipts: Iterable[ReceiptFact],
    replies: Iterable[ReplyFact],
    registration: Registration | None,
    created_at: datetime,
    zone: tzinfo,
    state: State | None = None,
) -> dict:
    """Every derived column of a message (COLUMNS), from the SET of its receipts and replies.

    Only first arrivals are given: a repeated push is not activity, or last_activity_at would
    depend on the order in which duplicates and new receipts arrive. `state` may pass the
    fold of `receipts` when the caller has it already.
    """
    receipts = list(receipts)
    replies = sorted(replies, key=lambda r: (r.received_at, r.order))
    state = state if state is not None else fold(receipts)
    cost = state.cost or (None, None, None, None)
    last = replies[-1] if replies else None
    anomalies = message_anomalies(state, receipts, replies)
    activity = [created_at]
    activity.extend(r.received_at for r in receipts)
    if registration is not None:
        activity.append(registration.registered_at)
    if last is not None:
        activity.append(last.received_at)
    return {
        # The sending system's word on the phone wins; otherwise learn it from the first reply.
        "phone": registration.phone if registration else (replies[0].phone if replies else None),
        "registered_at": registration.registered_at if registration else None,
        "text": registration.text if registration else None,
        "appkey": registration.appkey if registration else None,
        "function_type": registration.function_type if registration else None,
        "rate_type": registration.rate_type if registration else None,
        "tags": tags_text(registration.tags) if registration else None,
        "status": state.status,
        "code": state.code,
        "code_message": state.code_message,
        "send_time_raw": state.send_time_raw,
        "send_time": _send_time(state.send_time_raw, zone) if state.send_time_raw else None,
        "accepted_at": state.times.get("success"),
        "delivered_at": state.times.get("delivered"),
        "seen_at": state.times.get("seen"),
        "failed_at": state.times.get("failed"),
        "expired_at": state.times.get("expired"),
        "cost_currency": cost[0],
        "cost_local_price": cost[1],
        "cost_original_price": cost[2],
        "cost_rate_type": cost[3],
        "anomalies": "; ".join(anomalies) or None,
        "anomaly": bool(anomalies),
        "receipts_count": len(receipts),
        "replies_count": len(replies),
        "last_reply_text": reply_preview(last.text, last.file_name, last.media) if last else None,
        "last_activity_at": max(activity),
    }


def receipt_row(
    rc: payloads.ReceiptIn, raw_id: int, at: datetime, times: int, last: datetime
) -> dict:
    """A receipt's row: stored by ingest, expected by rebuild."""
    cost = rc.cost
    return {
        "raw_id": raw_id,
        "request_id": rc.request_id,
        "content_hash": rc.content_hash,
        "status": rc.status,
        "code": rc.code,
        "message": rc.message,
        "send_time_raw": rc.send_time_raw,
        "send_time": rc.send_time,
        "cost_currency": cost.currency if cost else None,
        "cost_local_price": cost.local_price if cost else None,
        "cost_original_price": cost.original_price if cost else None,
        "cost_rate_type": cost.rate_type if cost else None,
        "has_cost": cost is not None,
        "received_at": at,
        "times_received": times,
        "last_received_at": last,
        "coerced": coerced_text(rc.coerced),
    }


def reply_row(rp: payloads.ReplyIn, raw_id: int, at: datetime, times: int) -> dict:
    """A reply's row: stored by ingest, expected by rebuild."""
    return {
        "raw_id": raw_id,
        "content_hash": rp.content_hash,
        "phone": rp.phone,
        "appkey": rp.appkey,
        "trace_request_id": rp.trace_request_id,
        "text": rp.text,
        "media": rp.media,
        "file_name": rp.file_name,
        "send_time_raw": rp.send_time_raw,
        "send_time": rp.send_time,
        "received_at": at,
        "times_received": times,
        "coerced": coerced_text(rp.coerced),
    }
