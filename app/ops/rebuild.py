"""Recompute every message from the raw record: re-parse the accepted bodies, derive the
columns with `derivation.message_columns` as ingest does, and report differences.

Messages are walked in request_id order, a batch at a time, with one query per table per
batch, so a million messages take minutes, not hours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from flask import current_app

from ..core import payloads
from ..core.payloads import Invalid
from ..core.services import services
from ..records.derivation import (
    Registration,
    message_columns,
    receipt_fact,
    receipt_row,
    reply_fact,
    reply_row,
)
from ..records.models import Message, MessageTag, RawBody, Receipt, Reply, db
from .maintenance import recount_contacts

MAX_EXAMPLES = 10


@dataclass
class Report:
    messages: int = 0
    changed_messages: int = 0
    columns: Counter = field(default_factory=Counter)
    receipts_missing: int = 0  # in the raw record, not in the receipt table
    receipts_fixed: int = 0  # arrival counters that disagreed with the raw record
    receipts_unbacked: int = 0  # stored, with no accepted raw body behind them
    replies_missing: int = 0
    replies_fixed: int = 0
    replies_unbacked: int = 0
    tags_missing: int = 0  # a registration's tag without its message_tag row
    tags_unbacked: int = 0  # a message_tag row no accepted registration gave
    unreadable: int = 0  # accepted raw bodies that no longer pass validation
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text)

    @property
    def differences(self) -> int:
        return (
            self.changed_messages
            + self.receipts_missing
            + self.receipts_fixed
            + self.receipts_unbacked
            + self.replies_missing
            + self.replies_fixed
            + self.replies_unbacked
            + self.tags_missing
            + self.tags_unbacked
            + self.unreadable
        )

    def lines(self) -> list[str]:
        out = [f"messages checked: {self.messages}, differing: {self.changed_messages}"]
        if self.columns:
            out.append(
                "columns: " + ", ".join(f"{name} {n}" for name, n in sorted(self.columns.items()))
            )
        for label, n in (
            ("receipts missing", self.receipts_missing),
            ("receipt counters fixed", self.receipts_fixed),
            ("receipts without a raw body", self.receipts_unbacked),
            ("replies missing", self.replies_missing),
            ("reply counters fixed", self.replies_fixed),
            ("replies without a raw body", self.replies_unbacked),
            ("tags missing", self.tags_missing),
            ("tags no registration gave", self.tags_unbacked),
            ("accepted bodies that no longer validate", self.unreadable),
        ):
            if n:
                out.append(f"{label}: {n}")
        out.extend(self.examples)
        out.append("no differences" if not self.differences else f"differences: {self.differences}")
        return out


@dataclass
class Backed:
    """A receipt or reply as its accepted raw bodies say: the first body and when it came,
    how many bodies carried it, and when the last one came."""

    item: payloads.ReceiptIn | payloads.ReplyIn
    raw_id: int
    at: datetime
    times: int = 1
    last: datetime | None = None


@dataclass
class Expected:
    """What the raw record says about one message."""

    receipts: dict[str, Backed] = field(default_factory=dict)  # by content_hash
    replies: dict[str, Backed] = field(default_factory=dict)  # by content_hash
    registration: Registration | None = None  # every registration's, in the order applied


def applied_order(raws: list) -> list:
    """A message's accepted bodies (given by raw id) in the order they were applied: by raw id,
    since a batch numbers its bodies once it holds its messages' locks, except that a body
    reprocessed later (`reprocess`: rejected when it arrived, applied now under its old id)
    comes after every body received before it was reprocessed."""
    order = [raw for raw in raws if raw.reprocessed_at is None]
    for late in sorted((r for r in raws if r.reprocessed_at is not None), key=_reprocessed):
        at = len(order)
        while at and order[at - 1].received_at > late.reprocessed_at:
            at -= 1
        order.insert(at, late)
    return order


def _reprocessed(raw):
    return raw.reprocessed_at, raw.id


def _expected(raws, zone, report: Report) -> Expected:
    exp = Expected()
    for raw in applied_order(raws):
        try:
            data = payloads.parse_json_object(raw.body, raw.content_type)
            if raw.endpoint == "dr":
                rc = payloads.parse_receipt(data, zone)
                seen = exp.receipts.get(rc.content_hash)
                if seen is None:
                    exp.receipts[rc.content_hash] = Backed(
                        rc, raw.id, raw.received_at, last=raw.received_at
                    )
                else:
                    seen.times += 1
                    seen.last = max(seen.last, raw.received_at)
            elif raw.endpoint == "message":
                rp = payloads.parse_reply(data, zone)
                seen = exp.replies.get(rp.content_hash)
                if seen is None:
                    exp.replies[rp.content_hash] = Backed(rp, raw.id, raw.received_at)
                else:
                    seen.times += 1
            elif raw.endpoint == "register":
                rg = payloads.parse_registration(data)
                exp.registration = (
                    Registration.first(rg, raw.received_at)
                    if exp.registration is None
                    else exp.registration.then(rg, raw.received_at)
                )
        except Invalid as exc:
            report.unreadable += 1
            report.note(f"raw body {raw.id}: accepted but now invalid: {exc}")
    return exp


def derive(msg, exp: Expected, zone) -> dict:
    """The message's columns from its raw record (by `derivation.message_columns`, as ingest
    derives them), where they differ from the stored row."""
    new = message_columns(
        (receipt_fact(b.item, b.at) for b in exp.receipts.values()),
        (reply_fact(b.item, b.at, b.raw_id) for b in exp.replies.values()),
        exp.registration,
        msg.created_at,
        zone,
    )
    return {name: value for name, value in new.items() if getattr(msg, name) != value}


def _check_derived_rows(
    exp: Expected, receipts: list, replies: list, report: Report, writes: dict
) -> None:
    stored = {r.content_hash: r for r in receipts}
    for digest, backed in exp.receipts.items():
        rc, raw_id, at, times, last = (
            backed.item,
            backed.raw_id,
            backed.at,
            backed.times,
            backed.last,
        )
        row = stored.pop(digest, None)
        if row is None:
            report.receipts_missing += 1
            report.note(
                f"{rc.request_id}: receipt {rc.status} missing, rebuilt from raw body {raw_id}"
            )
            writes["receipt_insert"].append(receipt_row(rc, raw_id, at, times, last))
        elif (row.times_received, row.last_received_at, row.received_at) != (times, last, at):
            report.receipts_fixed += 1
            writes["receipt_update"].append(
                {"id": row.id, "times_received": times, "last_received_at": last, "received_at": at}
            )
    for row in stored.values():
        report.receipts_unbacked += 1
        report.note(f"{row.request_id}: receipt {row.id} ({row.status}) has no accepted raw body")
    stored = {r.content_hash: r for r in replies}
    for digest, backed in exp.replies.items():
        rp, raw_id, at, times = backed.item, backed.raw_id, backed.at, backed.times
        row = stored.pop(digest, None)
        if row is None:
            report.replies_missing += 1
            report.note(f"{rp.trace_request_id}: reply missing, rebuilt from raw body {raw_id}")
            writes["reply_insert"].append(reply_row(rp, raw_id, at, times))
        elif (row.times_received, row.received_at) != (times, at):
            report.replies_fixed += 1
            writes["reply_update"].append(
                {"id": row.id, "times_received": times, "received_at": at}
            )
    for row in stored.values():
        report.replies_unbacked += 1
        report.note(f"{row.trace_request_id}: reply {row.id} has no accepted raw body")


def _check_tags(rid: str, exp: Expected, rows: list, report: Report, writes: dict) -> None:
    """The message_tag rows of a message are its registrations' tags."""
    expected = exp.registration.tags if exp.registration is not None else frozenset()
    stored = {r.tag for r in rows}
    for tag in sorted(expected - stored):
        report.tags_missing += 1
        report.note(f"{rid}: tag {tag!r} missing, rebuilt from its registration")
        writes["tag_insert"].append({"request_id": rid, "tag": tag})
    for tag in sorted(stored - expected):
        report.tags_unbacked += 1
        report.note(f"{rid}: tag {tag!r} has no accepted registration behind it")


def _group(rows, key) -> dict:
    out: dict = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def rebuild_batch(messages: list, zone, report: Report, fix: bool) -> set[str]:
    """Check (and with `fix`, repair) these messages; returns the phones whose threads changed."""
    ids = [m.request_id for m in messages]
    raws = _group(
        db.session.execute(
            db.select(
                RawBody.id,
                RawBody.endpoint,
                RawBody.received_at,
                RawBody.content_type,
                RawBody.body,
                RawBody.request_id,
                RawBody.reprocessed_at,
            )
            .where(RawBody.request_id.in_(ids), RawBody.outcome.in_(("accepted", "duplicate")))
            .order_by(RawBody.id)
        ).all(),
        lambda r: r.request_id,
    )
    # Plain rows, not ORM objects: only what the comparison needs, a million times over.
    receipts = _group(
        db.session.execute(
            db.select(
                Receipt.id,
                Receipt.request_id,
                Receipt.content_hash,
                Receipt.status,
                Receipt.times_received,
                Receipt.received_at,
                Receipt.last_received_at,
            ).where(Receipt.request_id.in_(ids))
        ).all(),
        lambda r: r.request_id,
    )
    replies = _group(
        db.session.execute(
            db.select(
                Reply.id,
                Reply.trace_request_id,
                Reply.content_hash,
                Reply.times_received,
                Reply.received_at,
            ).where(Reply.trace_request_id.in_(ids))
        ).all(),
        lambda r: r.trace_request_id,
    )
    tags = _group(
        db.session.execute(
            db.select(MessageTag.request_id, MessageTag.tag).where(MessageTag.request_id.in_(ids))
        ).all(),
        lambda r: r.request_id,
    )
    writes = {
        "receipt_insert": [],
        "receipt_update": [],
        "reply_insert": [],
        "reply_update": [],
        "message": [],
        "tag_insert": [],
    }
    phones: set[str] = set()
    for msg in messages:
        report.messages += 1
        exp = _expected(raws.get(msg.request_id, ()), zone, report)
        _check_derived_rows(
            exp, receipts.get(msg.request_id, []), replies.get(msg.request_id, []), report, writes
        )
        _check_tags(msg.request_id, exp, tags.get(msg.request_id, []), report, writes)
        changes = derive(msg, exp, zone)
        if changes:
            report.changed_messages += 1
            report.columns.update(list(changes))
            shown = ", ".join(
                f"{k}: {getattr(msg, k)!r} -> {v!r}" for k, v in list(changes.items())[:4]
            )
            report.note(f"{msg.request_id}: {shown}")
            writes["message"].append({"request_id": msg.request_id, **changes})
            if "phone" in changes or "replies_count" in changes:
                phones.update(p for p in (msg.phone, changes.get("phone")) if p)
    if fix:
        for key, model in (
            ("receipt_insert", Receipt),
            ("reply_insert", Reply),
            ("tag_insert", MessageTag),
        ):
            if writes[key]:
                db.session.execute(db.insert(model.__table__), writes[key])
        for key, model in (
            ("receipt_update", Receipt),
            ("reply_update", Reply),
            ("message", Message),
        ):
            if writes[key]:
                db.session.execute(db.update(model), writes[key])
    return phones


def rebuild(
    *, batch_size: int = 2000, fix: bool = True, progress: Callable[[int], None] = lambda n: None
) -> Report:
    """Walk every message; with `fix`, write what the raw record says wherever it differs."""
    zone = services(current_app).sendtime_zone
    report = Report()
    after = ""
    while True:
        messages = db.session.execute(
            db.select(*Message.__table__.c)
            .where(Message.request_id > after)
            .order_by(Message.request_id)
            .limit(batch_size)
        ).all()
        if not messages:
            break
        after = messages[-1].request_id
        phones = rebuild_batch(messages, zone, report, fix)
        if fix:
            recount_contacts(phones)
            db.session.commit()
        else:
            db.session.rollback()
        progress(len(messages))
    return report
