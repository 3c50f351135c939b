"""Store every body, apply what is valid, log the activity: one transaction per request.

No `request` here: views hand over the bytes and headers. Status changes go only through
`status.fold`, by `refresh_message`, which recomputes a message from everything stored
about it, so any arrival order gives the same record.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Optional

from blinker import Namespace
from flask import current_app
from sqlalchemy import case, func
from sqlalchemy.exc import SQLAlchemyError

from . import payloads, retention, rollup, tally
from .models import Activity, Contact, Message, RawBody, Receipt, Reply, db, utcnow
from .payloads import Invalid
from .sqlutil import insert_for
from .status import ReceiptFact, State, fold

signals = Namespace()
# Sent after a commit that appended to the activity log; live updates listen to it.
activity_committed = signals.signal("activity-committed")

ENDPOINTS = ("dr", "message", "register")
KEPT_HEADERS = ("content-type", "user-agent", "accesskey", "ts", "biztype", "action", "sign",
                "x-forwarded-for", "token-digest")


@dataclass
class Result:
    http_status: int
    outcome: str  # accepted | duplicate | rejected | refused
    raw_id: int
    request_id: Optional[str] = None
    error: Optional[dict] = None
    payload: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.http_status < 400


def sendtime_zone() -> tzinfo:
    return current_app.extensions["viberwatch.sendtime_zone"]


_insert = insert_for


def insert_ignore(model, values: dict, conflict: list[str]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when a row was inserted."""
    stmt = _insert(model).values(**values).on_conflict_do_nothing(index_elements=conflict)
    # Without preserve_rowcount, psycopg's INSERT reports -1 on SQLAlchemy 2.1.
    return db.session.execute(stmt, execution_options={"preserve_rowcount": True}).rowcount == 1


def lock_message(request_id: str, at: datetime) -> Message:
    """The message row, created if new and locked until commit (a no-op lock on SQLite,
    where the raw insert that began the transaction already holds the write lock)."""
    created = insert_ignore(Message, {"request_id": request_id, "created_at": at,
                                      "last_activity_at": at, "anomaly": False,
                                      "receipts_count": 0, "replies_count": 0}, ["request_id"])
    msg = db.session.execute(
        db.select(Message).where(Message.request_id == request_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()
    # Not yet in the tally and rollups: refresh_message counts it once its state is known.
    msg.untallied = created
    return msg


def touch_contact(phone: str, at: datetime, *, messages: int = 0, replies: int = 0,
                  preview: Optional[str] = None) -> None:
    """Atomically bump a phone's thread summary."""
    values = {"phone": phone, "messages_count": max(messages, 0), "replies_count": replies,
              "last_activity_at": at, "last_preview": preview,
              "last_reply_at": at if replies else None}
    stmt = _insert(Contact).values(**values)
    later = stmt.excluded.last_activity_at > Contact.last_activity_at
    update = {
        "messages_count": Contact.messages_count + messages,
        "replies_count": Contact.replies_count + replies,
        "last_activity_at": case((later, stmt.excluded.last_activity_at), else_=Contact.last_activity_at),
    }
    if preview is not None:
        update["last_preview"] = case((later, stmt.excluded.last_preview), else_=Contact.last_preview)
    if replies:
        update["last_reply_at"] = case(
            (Contact.last_reply_at.is_(None), stmt.excluded.last_reply_at),
            (stmt.excluded.last_reply_at > Contact.last_reply_at, stmt.excluded.last_reply_at),
            else_=Contact.last_reply_at)
    db.session.execute(stmt.on_conflict_do_update(index_elements=["phone"], set_=update))


def reply_preview(text: Optional[str], file_name: Optional[str], media: Optional[str]) -> str:
    if text is not None:
        return text[:200]
    return f"[media] {file_name or media or ''}"[:200]


def receipt_fact(r: Receipt) -> ReceiptFact:
    cost = (r.cost_currency, r.cost_local_price, r.cost_original_price, r.cost_rate_type) if r.has_cost else None
    return ReceiptFact(status=r.status, code=r.code, message=r.message, received_at=r.received_at,
                       key=r.content_hash, send_time_raw=r.send_time_raw, cost=cost)


def derived_columns(state: State, zone: tzinfo, *, receipts_count: int, replies_count: int,
                    last_reply: Optional[tuple], activity: list) -> dict:
    """A message's columns that follow from its folded receipts and its replies.

    `last_reply` is (text, file_name, media) of the latest reply; `activity` the times of
    every first arrival (None entries are ignored).
    """
    cost = state.cost or (None, None, None, None)
    return {
        "status": state.status,
        "code": state.code,
        "code_message": state.code_message,
        "send_time_raw": state.send_time_raw,
        "send_time": payloads.parse_send_time(state.send_time_raw, zone) if state.send_time_raw else None,
        "accepted_at": state.times.get("success"),
        "delivered_at": state.times.get("delivered"),
        "seen_at": state.times.get("seen"),
        "failed_at": state.times.get("failed"),
        "expired_at": state.times.get("expired"),
        "cost_currency": cost[0],
        "cost_local_price": cost[1],
        "cost_original_price": cost[2],
        "cost_rate_type": cost[3],
        "anomalies": "; ".join(state.anomalies) or None,
        "anomaly": bool(state.anomalies),
        "receipts_count": receipts_count,
        "replies_count": replies_count,
        "last_reply_text": reply_preview(*last_reply) if last_reply else None,
        "last_activity_at": max(t for t in activity if t is not None),
    }


def refresh_message(msg: Message) -> dict:
    """Recompute a message's derived columns from its receipts, replies and registration.

    Returns the columns that changed ({name: (old, new)}); the caller holds the row lock.
    """
    receipts = db.session.execute(
        db.select(Receipt).where(Receipt.request_id == msg.request_id)).scalars().all()
    state = fold(receipt_fact(r) for r in receipts)
    first_reply = db.session.execute(
        db.select(Reply.phone).where(Reply.trace_request_id == msg.request_id)
        .order_by(Reply.received_at, Reply.id).limit(1)).scalar()
    reply_stats = db.session.execute(
        db.select(func.count(Reply.id), func.max(Reply.received_at))
        .where(Reply.trace_request_id == msg.request_id)).one()
    last_reply = db.session.execute(
        db.select(Reply.text, Reply.file_name, Reply.media).where(Reply.trace_request_id == msg.request_id)
        .order_by(Reply.received_at.desc(), Reply.id.desc()).limit(1)).first()
    # A repeated push only bumps its receipt's counters; counting it as activity would make
    # last_activity_at depend on the order in which duplicates and new receipts arrive.
    activity = [msg.created_at, msg.registered_at, reply_stats[1],
                *(r.received_at for r in receipts)]
    new = derived_columns(state, sendtime_zone(), receipts_count=len(receipts),
                          replies_count=reply_stats[0], last_reply=last_reply, activity=activity)
    # The sending system's word on the phone wins; otherwise learn it from a reply.
    if msg.registered_at is None:
        new["phone"] = first_reply
    counted = not getattr(msg, "untallied", False)
    before = (tally.key_of(msg), rollup.share_of(msg)) if counted else (None, None)
    changed = {}
    for name, value in new.items():
        old = getattr(msg, name)
        if old != value:
            changed[name] = (old, value)
            setattr(msg, name, value)
    tally.move(before[0], tally.key_of(msg))
    rollup.move(before[1], rollup.share_of(msg))
    msg.untallied = False
    return changed


def _sync_contact_for_phone_change(msg: Message, changed: dict, at: datetime) -> None:
    if "phone" not in changed:
        return
    old, new = changed["phone"]
    if old:
        touch_contact(old, at, messages=-1)
    if new:
        touch_contact(new, at, messages=1)


def _log(kind: str, at: datetime, raw_id: int, *, request_id=None, phone=None, status=None,
         summary=None) -> Activity:
    entry = Activity(kind=kind, created_at=at, raw_id=raw_id, request_id=request_id, phone=phone,
                     status=status, summary=summary)
    db.session.add(entry)
    return entry


def apply_receipt(rc: payloads.ReceiptIn, raw: RawBody) -> Result:
    at = raw.received_at
    msg = lock_message(rc.request_id, at)
    cost = rc.cost
    inserted = insert_ignore(Receipt, {
        "raw_id": raw.id, "request_id": rc.request_id, "content_hash": rc.content_hash,
        "status": rc.status, "code": rc.code, "message": rc.message,
        "send_time_raw": rc.send_time_raw, "send_time": rc.send_time,
        "cost_currency": cost.currency if cost else None,
        "cost_local_price": cost.local_price if cost else None,
        "cost_original_price": cost.original_price if cost else None,
        "cost_rate_type": cost.rate_type if cost else None,
        "has_cost": cost is not None,
        "received_at": at, "times_received": 1, "last_received_at": at,
    }, ["content_hash"])
    if not inserted:
        db.session.execute(
            db.update(Receipt).where(Receipt.content_hash == rc.content_hash)
            .values(times_received=Receipt.times_received + 1, last_received_at=at))
        return Result(200, "duplicate", raw.id, rc.request_id)
    changed = refresh_message(msg)
    _sync_contact_for_phone_change(msg, changed, at)
    if msg.phone:
        touch_contact(msg.phone, at)
    _log("receipt", at, raw.id, request_id=rc.request_id, phone=msg.phone, status=rc.status,
         summary=f"{rc.code} {rc.message}"[:200])
    return Result(200, "accepted", raw.id, rc.request_id)


def apply_reply(rp: payloads.ReplyIn, raw: RawBody) -> Result:
    at = raw.received_at
    # Lock the traced message first (creating it if unknown) so a receipt arriving at the
    # same moment cannot miss this reply's phone.
    msg = lock_message(rp.trace_request_id, at)
    inserted = insert_ignore(Reply, {
        "raw_id": raw.id, "content_hash": rp.content_hash, "phone": rp.phone, "appkey": rp.appkey,
        "trace_request_id": rp.trace_request_id, "text": rp.text, "media": rp.media,
        "file_name": rp.file_name, "send_time_raw": rp.send_time_raw, "send_time": rp.send_time,
        "received_at": at, "times_received": 1,
    }, ["content_hash"])
    if not inserted:
        db.session.execute(db.update(Reply).where(Reply.content_hash == rp.content_hash)
                           .values(times_received=Reply.times_received + 1))
        return Result(200, "duplicate", raw.id, rp.trace_request_id)
    changed = refresh_message(msg)
    _sync_contact_for_phone_change(msg, changed, at)
    preview = reply_preview(rp.text, rp.file_name, rp.media)
    touch_contact(rp.phone, at, replies=1, preview=preview)
    _log("reply", at, raw.id, request_id=rp.trace_request_id, phone=rp.phone, status=msg.status,
         summary=preview)
    return Result(200, "accepted", raw.id, rp.trace_request_id)


def apply_registration(rg: payloads.RegistrationIn, raw: RawBody) -> Result:
    at = raw.received_at
    msg = lock_message(rg.request_id, at)
    fields = {"phone": rg.phone, "text": rg.text, "appkey": rg.appkey, "function_type": rg.function_type}
    if msg.registered_at is not None and all(getattr(msg, k) == v for k, v in fields.items()):
        return Result(200, "duplicate", raw.id, rg.request_id, payload={"requestId": rg.request_id})
    first = msg.registered_at is None
    old_phone = msg.phone
    if first:
        msg.registered_at = at
    for name, value in fields.items():
        setattr(msg, name, value)
    changed = refresh_message(msg)
    if old_phone != msg.phone:
        changed["phone"] = (old_phone, msg.phone)
    _sync_contact_for_phone_change(msg, changed, at)
    touch_contact(msg.phone, at, preview=(f"→ {rg.text}"[:200] if rg.text else None))
    _log("register", at, raw.id, request_id=rg.request_id, phone=rg.phone, status=msg.status,
         summary=(rg.text or "")[:200])
    return Result(201 if first else 200, "accepted", raw.id, rg.request_id,
                  payload={"requestId": rg.request_id})


def _apply(endpoint: str, data: dict, raw: RawBody) -> Result:
    zone = sendtime_zone()
    if endpoint == "dr":
        return apply_receipt(payloads.parse_receipt(data, zone), raw)
    if endpoint == "message":
        return apply_reply(payloads.parse_reply(data, zone), raw)
    return apply_registration(payloads.parse_registration(data), raw)


def _guess_request_id(data) -> Optional[str]:
    if isinstance(data, dict):
        for key in ("requestId", "traceRequestId"):
            value = data.get(key)
            # PostgreSQL text cannot hold NUL; such an id is only in the raw body.
            if isinstance(value, str) and 0 < len(value) <= payloads.MAX_ID_LENGTH and "\x00" not in value:
                return value
    return None


def _process(raw: RawBody) -> Result:
    """Validate and apply one stored body inside the current transaction."""
    data = None
    try:
        data = payloads.parse_json_object(raw.body, raw.content_type)
        result = _apply(raw.endpoint, data, raw)
    except Invalid as exc:
        result = Result(exc.status, "rejected", raw.id, _guess_request_id(data), error=exc.as_json())
    raw.outcome = result.outcome
    raw.http_status = result.http_status
    raw.reason = result.error["error"] if result.error else None
    raw.request_id = result.request_id
    return result


def _committed(result: Result) -> Result:
    db.session.commit()
    if result.outcome == "accepted":
        activity_committed.send(current_app._get_current_object())
    return result


def store_raw(endpoint: str, body: bytes, content_type: Optional[str], headers: dict,
              remote_addr: Optional[str], outcome: str, http_status: int,
              reason: Optional[str] = None, received_at: Optional[datetime] = None) -> RawBody:
    kept = {k: v for k, v in ((k.lower(), v) for k, v in headers.items()) if k in KEPT_HEADERS}
    raw = RawBody(endpoint=endpoint, received_at=received_at or utcnow(), content_type=content_type,
                  body=body, headers=json.dumps(kept), remote_addr=remote_addr, outcome=outcome,
                  http_status=http_status, reason=reason)
    db.session.add(raw)
    db.session.flush()
    return raw


def ingest(endpoint: str, body: bytes, content_type: Optional[str], headers: dict,
           remote_addr: Optional[str] = None) -> Result:
    """Store a body verbatim and apply it, all in one transaction."""
    assert endpoint in ENDPOINTS
    received_at = utcnow()
    try:
        raw = store_raw(endpoint, body, content_type, headers, remote_addr, "pending", 0,
                        received_at=received_at)
        result = _process(raw)
        db.session.commit()
    except Exception as exc:
        # Whatever failed (lost connection, deadlock, a value no check foresaw), keep the
        # body on its own so `reprocess` can apply it later, and answer 503 so the sender retries.
        db.session.rollback()
        reason = f"not applied: {type(exc).__name__}"
        error = {"error": reason, "field": "body", "reason": reason}
        current_app.logger.exception("ingest of a %s body failed", endpoint)
        try:
            raw = store_raw(endpoint, body, content_type, headers, remote_addr, "rejected", 503,
                            reason, received_at=received_at)
            db.session.commit()
        except SQLAlchemyError:
            # Not even the body could be written: the 503 still tells the sender to retry.
            db.session.rollback()
            current_app.logger.exception("a %s body could not be kept", endpoint)
            return Result(503, "rejected", 0, error=error)
        result = Result(503, "rejected", raw.id, error=error)
    if not result.ok:
        retention.kept(len(body))  # never applied: bounded by REJECTED_KEEP_BYTES / _DAYS
    return _committed(result)


def refuse(endpoint: str, body: bytes, content_type: Optional[str], headers: dict,
           remote_addr: Optional[str], http_status: int, reason: str) -> RawBody:
    """Keep a body whose request was refused before validation (authentication, size)."""
    raw = store_raw(endpoint, body, content_type, headers, remote_addr, "refused", http_status, reason)
    db.session.commit()
    retention.kept(len(body))
    return raw


def reprocess(raw_id: int) -> Result:
    """Run a rejected or refused body through validation again, as if it arrived when it did."""
    raw = db.session.execute(
        db.select(RawBody).where(RawBody.id == raw_id).with_for_update()).scalar_one()
    if raw.outcome not in ("rejected", "refused"):
        db.session.rollback()
        return Result(raw.http_status, raw.outcome, raw.id, raw.request_id)
    if raw.outcome == "refused":
        from .webhook_auth import still_refused  # it imports this module

        refused = still_refused(raw)  # authentication again, never around it
        if refused is not None:
            return refused
    result = _process(raw)
    raw.reprocessed_at = utcnow()
    return _committed(result)


def rejected_ids(include_refused: bool = False) -> list[int]:
    outcomes = ["rejected", "refused"] if include_refused else ["rejected"]
    return list(db.session.execute(
        db.select(RawBody.id).where(RawBody.outcome.in_(outcomes)).order_by(RawBody.id)).scalars())

