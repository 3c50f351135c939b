"""Store every body, apply what is valid, log the activity: group commit.

Each server process has one ingest writer, a thread. A request thread hands its body over
(`ingest`) and waits; the writer takes every body waiting at that moment (up to
INGEST_BATCH_MAX) and applies them together in one transaction (`apply_batch`):

    lock the touched messages (one upsert, in requestId order) and read what is stored
    about them (one query for their receipts, one for their replies)
    decide each body in arrival order: accepted, duplicate or rejected, each its own answer
    raw bodies (one multi-row insert), new receipts and replies, repeat counters
    each touched message's columns from the union (`derivation.message_columns`)
    activity rows, contacts, then the hot rows: tally and rollups summed per key, written
    once per key in key order
    commit, then release each waiting request with its own answer

No `request` here: views hand over the bytes and headers. Status changes go only through
`status.fold` (by way of `derivation`), over the whole set of a message's receipts, so any
arrival order, batching or concurrency gives the same record.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from functools import cache, partial
from pathlib import Path
from types import SimpleNamespace

import psycopg
from blinker import Namespace
from flask import Flask, current_app
from sqlalchemy import bindparam, case
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from ..core import payloads
from ..core.payloads import Invalid
from ..core.status import PRECEDENCE, ReceiptFact
from . import contacts, replay, retention, rollup, spool, tally
from .derivation import (
    COLUMNS,
    Registration,
    ReplyFact,
    message_columns,
    outbound_preview,
    receipt_fact,
    receipt_row,
    reply_fact,
    reply_preview,
    reply_row,
)
from .models import Activity, Message, RawBody, Receipt, Reply, SpoolMark, UTCDateTime, db, utcnow
from .sqlutil import (
    COPY_FROM,
    begin_writing,
    insert_for,
    pipelined,
    run_many,
    select_in,
    send_next_ids,
    send_select_in,
)

log = logging.getLogger(__name__)
# One line when spooling starts or fails, and when a spool is drained (app/observability/logs.py formats it).
spool_log = logging.getLogger("viberwatch.spool")

signals = Namespace()
# Sent after a commit that appended to the activity log; live updates listen to it.
activity_committed = signals.signal("activity-committed")
# Sent in a worker when the server's committer answers that it applied a body: the commit was
# another process's, this one's live updates are woken without publishing it again.
activity_answered = signals.signal("activity-answered")
# Sent after each ingest transaction, with the number of bodies it applied (for /metrics).
batch_committed = signals.signal("batch-committed")

ENDPOINTS = ("dr", "message", "register")
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "accesskey",
    "ts",
    "biztype",
    "action",
    "sign",
    "x-forwarded-for",
    "token-digest",
)
# A writer thread with nothing to do for this long ends; the next body starts another.
IDLE_SECONDS = 30.0


@dataclass
class Result:
    http_status: int
    outcome: str  # accepted | duplicate | rejected | refused
    raw_id: int | None
    request_id: str | None = None
    error: dict | None = None
    payload: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.http_status < 400


NOT_IN_TIME = "not committed in time; it is still kept and applied"


def unavailable(reason: str, raw_id: int | None = None) -> Result:
    return Result(
        503, "rejected", raw_id, error={"error": reason, "field": "body", "reason": reason}
    )


class Done:
    """Set once by the writer, waited for by the one request thread that handed the body over:
    a bare lock, released to wake it. (A threading.Event wakes its waiter only for it to wait
    again on the Event's own lock, which the writer holds while it wakes the whole batch.)"""

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        if not self._set:
            self._set = True
            self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        return (
            self._set or self._lock.acquire(timeout=-1 if timeout is None else timeout) or self._set
        )


@dataclass(eq=False)
class Job:
    """One body handed to the writer, and its answer once committed."""

    endpoint: str
    body: bytes
    content_type: str | None
    headers: dict  # the headers that matter (KEPT_HEADERS), lower-case names
    remote_addr: str | None
    received_at: datetime | None = None
    raw_id: int | None = None  # a stored body run again (reprocess): its row is updated
    spooled: str | None = None  # "file:number" of the spool record it is applied from
    signature: replay.Signature | None = None  # verified; taken (used once) with the body
    result: Result | None = None
    done: Done = field(default_factory=Done)

    def finish(self, result: Result) -> None:
        self.result = result
        self.done.set()


_last_arrival: list[datetime] = []
_arrival_lock = threading.Lock()


def stamp_arrival(job: Job) -> None:
    """The time a body is received: now, and later than any body of this process before it,
    so received times order bodies as they arrived even within one clock tick."""
    with _arrival_lock:
        now = utcnow()
        if _last_arrival and now <= _last_arrival[0]:
            now = _last_arrival[0] + timedelta(microseconds=1)
        _last_arrival[:] = [now]
    job.received_at = now


def kept_headers(headers) -> dict:
    return {k: v for k, v in ((k.lower(), v) for k, v in headers.items()) if k in KEPT_HEADERS}


def sendtime_zone() -> tzinfo:
    return current_app.extensions["viberwatch.sendtime_zone"]


Item = payloads.ReceiptIn | payloads.ReplyIn | payloads.RegistrationIn


@dataclass(eq=False)
class Parsed:
    """A job after validation: its item, or the answer that rejects it."""

    job: Job
    item: Item | None = None
    result: Result | None = None
    guessed_id: str | None = None

    @property
    def request_id(self) -> str | None:
        item = self.item
        if item is None:
            return self.guessed_id
        return item.trace_request_id if isinstance(item, payloads.ReplyIn) else item.request_id


def _guess_request_id(data) -> str | None:
    if isinstance(data, dict):
        for key in ("requestId", "traceRequestId"):
            value = data.get(key)
            # PostgreSQL text cannot hold NUL; such an id is only in the raw body.
            if (
                isinstance(value, str)
                and 0 < len(value) <= payloads.MAX_ID_LENGTH
                and "\x00" not in value
            ):
                return value
    return None


def parse(job: Job, zone: tzinfo) -> Parsed:
    """Validate a body (no database): its item, or its rejection."""
    data = None
    try:
        data = payloads.parse_json_object(job.body, job.content_type)
        if job.endpoint == "dr":
            return Parsed(job, payloads.parse_receipt(data, zone))
        if job.endpoint == "message":
            return Parsed(job, payloads.parse_reply(data, zone))
        return Parsed(job, payloads.parse_registration(data))
    except Invalid as exc:
        guessed = _guess_request_id(data)
        return Parsed(
            job,
            result=Result(exc.status, "rejected", None, guessed, error=exc.as_json()),
            guessed_id=guessed,
        )


# --- reading what is stored about the touched messages ----------------------------------------

# What a batch needs of a stored message: the registration, and what the tally and the
# rollups count it under (tally.key_of, rollup.share_of).
MESSAGE_COLUMNS = (
    "request_id",
    "phone",
    "registered_at",
    "text",
    "appkey",
    "function_type",
    "status",
    "code",
    "anomaly",
    "created_at",
    "last_activity_at",
    "receipts_count",
    "replies_count",
    "cost_currency",
    "cost_rate_type",
    "cost_local_price",
    "cost_original_price",
    "accepted_at",
    "delivered_at",
    "seen_at",
)
RECEIPT_COLUMNS = (
    "request_id",
    "content_hash",
    "status",
    "code",
    "message",
    "received_at",
    "send_time_raw",
    "has_cost",
    "cost_currency",
    "cost_local_price",
    "cost_original_price",
    "cost_rate_type",
)
STORED_RAW_COLUMNS = (
    "id",
    "endpoint",
    "received_at",
    "body",
    "outcome",
    "http_status",
    "request_id",
)
REPLY_COLUMNS = (
    "trace_request_id",
    "content_hash",
    "phone",
    "received_at",
    "raw_id",
    "text",
    "file_name",
    "media",
)
# receipts_count of a message row created by this transaction until its columns are written
# (a stored row never has it): tells new rows from old.
NEW_ROW = -1


@cache
def _create_statement(dialect: str):
    return insert_for(Message, dialect).on_conflict_do_nothing(index_elements=["request_id"])


def read_messages(
    conn, first_heard: dict[str, datetime], new_raw: int
) -> tuple[dict, dict, dict, list[int]]:
    """Create the messages not yet stored, lock all of them, read their rows, receipts and
    replies (request_id -> row, -> content_hash -> fact), and take `new_raw` raw body ids; on
    PostgreSQL in one round trip.

    Creating and locking go in requestId order, so two transactions never wait on each other
    in a cycle: a transaction that finds a key another one created waits for it in the first
    step, before it has locked anything further. The receipts and replies are read after the
    lock is held. (SQLite has one writer at a time.)

    The raw ids are taken once the locks are held, so of two transactions that touch one
    message the one applied first numbers its bodies first: the bodies of a message in raw id
    order (as `rebuild` reads them) are the bodies in the order they were applied, and the
    first arrival of a receipt is the one that stored it.
    """
    ids = sorted(first_heard)
    with pipelined(conn):
        run_many(
            conn,
            _create_statement(conn.dialect.name),
            [
                {
                    "request_id": rid,
                    "created_at": first_heard[rid],
                    "last_activity_at": first_heard[rid],
                    "anomaly": False,
                    "receipts_count": NEW_ROW,
                    "replies_count": 0,
                }
                for rid in ids
            ],
        )
        rows = send_select_in(
            conn, Message.__table__, MESSAGE_COLUMNS, "request_id", ids, lock=True
        )
        receipts = send_select_in(conn, Receipt.__table__, RECEIPT_COLUMNS, "request_id", ids)
        replies = send_select_in(conn, Reply.__table__, REPLY_COLUMNS, "trace_request_id", ids)
        raw_ids = send_next_ids(conn, RawBody.__table__, new_raw)
    return (
        {row.request_id: row for row in rows.rows()},
        _receipt_facts(receipts.rows()),
        _reply_facts(replies.rows()),
        raw_ids.rows(),
    )


def _receipt_facts(rows) -> dict[str, dict[str, ReceiptFact]]:
    """request_id -> content_hash -> the fold's view of each stored receipt."""
    out: dict[str, dict[str, ReceiptFact]] = {}
    for r in rows:
        cost = (
            (r.cost_currency, r.cost_local_price, r.cost_original_price, r.cost_rate_type)
            if r.has_cost
            else None
        )
        out.setdefault(r.request_id, {})[r.content_hash] = ReceiptFact(
            status=r.status,
            code=r.code,
            message=r.message,
            received_at=r.received_at,
            key=r.content_hash,
            send_time_raw=r.send_time_raw,
            cost=cost,
        )
    return out


def _reply_facts(rows) -> dict[str, dict[str, ReplyFact]]:
    """request_id -> content_hash -> each stored reply to it."""
    out: dict[str, dict[str, ReplyFact]] = {}
    for r in rows:
        out.setdefault(r.trace_request_id, {})[r.content_hash] = ReplyFact(
            r.phone, r.received_at, r.raw_id, r.text, r.file_name, r.media
        )
    return out


def registration_of(row) -> Registration | None:
    if row.registered_at is None:
        return None
    return Registration(row.phone, row.text, row.appkey, row.function_type, row.registered_at)


def stored_columns(request_ids: list[str]) -> dict[str, dict]:
    """Each message's columns as derived now from its stored receipts, replies and
    registration (what a batch would write for it)."""
    conn = db.session.connection()
    t = Message.__table__.c
    rows = conn.execute(db.select(Message.__table__).where(t.request_id.in_(request_ids))).all()
    receipts = _receipt_facts(
        select_in(conn, Receipt.__table__, RECEIPT_COLUMNS, "request_id", request_ids)
    )
    replies = _reply_facts(
        select_in(conn, Reply.__table__, REPLY_COLUMNS, "trace_request_id", request_ids)
    )
    return {
        row.request_id: message_columns(
            receipts.get(row.request_id, {}).values(),
            replies.get(row.request_id, {}).values(),
            registration_of(row),
            row.created_at,
            sendtime_zone(),
        )
        for row in rows
    }


# --- one batch ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Touched:
    """One message a batch touches: what is stored, and what the batch adds."""

    row: object  # the locked row as stored (receipts_count NEW_ROW when created now)
    receipts: dict  # content_hash -> ReceiptFact
    replies: dict  # content_hash -> ReplyFact (new ones get theirs once their raw id is known)
    registration: Registration | None
    changed: bool = False
    last_event_at: datetime | None = None
    # The phone and the statuses as each event leaves them, for its activity row: the log
    # reads the same whichever batch an event was applied in.
    phone: str | None = None
    statuses: set = field(default_factory=set)

    def __post_init__(self) -> None:
        self.phone = None if self.new else self.row.phone
        self.statuses = {r.status for r in self.receipts.values()}

    @property
    def new(self) -> bool:
        return self.row.receipts_count == NEW_ROW

    @property
    def status(self) -> str | None:
        return next((s for s in PRECEDENCE if s in self.statuses), None)

    def event(self, at: datetime) -> None:
        self.changed = True
        if self.last_event_at is None or at > self.last_event_at:
            self.last_event_at = at


@dataclass
class Repeat:
    """Further arrivals of a receipt or reply: added to its counters."""

    times: int = 0
    last: datetime | None = None

    def add(self, at: datetime) -> None:
        self.times += 1
        if self.last is None or at > self.last:
            self.last = at


@cache
def _statements() -> SimpleNamespace:
    m, rc, rp, raw = Message.__table__, Receipt.__table__, Reply.__table__, RawBody.__table__
    return SimpleNamespace(
        raw=db.insert(raw),
        raw_again=db.update(raw)
        .where(raw.c.id == bindparam("b_id"))
        .values(
            outcome=bindparam("outcome"),
            http_status=bindparam("http_status"),
            reason=bindparam("reason"),
            request_id=bindparam("request_id"),
            reprocessed_at=bindparam("reprocessed_at"),
        ),
        receipt=db.insert(rc),
        receipt_again=db.update(rc)
        .where(rc.c.content_hash == bindparam("b_hash"))
        .values(
            times_received=rc.c.times_received + bindparam("b_times"),
            last_received_at=case(
                (
                    rc.c.last_received_at < bindparam("b_last", type_=UTCDateTime()),
                    bindparam("b_last", type_=UTCDateTime()),
                ),
                else_=rc.c.last_received_at,
            ),
        ),
        reply=db.insert(rp),
        reply_again=db.update(rp)
        .where(rp.c.content_hash == bindparam("b_hash"))
        .values(times_received=rp.c.times_received + bindparam("b_times")),
        message=db.update(m)
        .where(m.c.request_id == bindparam("b_rid"))
        .values({name: bindparam(name) for name in COLUMNS}),
        activity=db.insert(Activity.__table__),
    )


def _text(value: str | None, limit: int) -> str | None:
    """A header value fit for a bounded text column (PostgreSQL text cannot hold NUL)."""
    return None if value is None else value.replace("\x00", "\ufffd")[:limit]


class Batch:
    """Applies validated bodies inside the caller's transaction; `run` returns True when an
    event joined the activity log. Answers are in each Parsed.result (given out after commit)."""

    def __init__(self, parsed: list[Parsed], zone: tzinfo):
        self.parsed = parsed
        self.zone = zone
        self.touched: dict[str, Touched] = {}
        self.new_receipts: dict[str, list] = {}  # content_hash -> [Parsed, Repeat]
        self.new_replies: dict[str, list] = {}
        self.receipt_repeats: dict[str, Repeat] = {}
        self.reply_repeats: dict[str, Repeat] = {}
        # Accepted bodies in arrival order: (body, kind, phone, status) for the activity log.
        self.events: list[tuple[Parsed, str, str | None, str | None]] = []
        self.contacts = contacts.Changes()

    def run(self, conn) -> bool:
        jobs = [p.job for p in self.parsed]
        self._leave_out_applied(conn)
        self._take_signatures(conn)
        valid = [p for p in self.parsed if p.item is not None]
        first_heard: dict[str, datetime] = {}
        for p in valid:
            rid, at = p.request_id, p.job.received_at
            if rid not in first_heard or at < first_heard[rid]:
                first_heard[rid] = at
        rows, receipts, replies, raw_ids = read_messages(
            conn, first_heard, sum(p.job.raw_id is None for p in self.parsed)
        )
        for rid, row in rows.items():
            self.touched[rid] = Touched(
                row, receipts.get(rid, {}), replies.get(rid, {}), registration_of(row)
            )
        for p in valid:
            self._decide(p)
        # A small batch's writes go to PostgreSQL in one round trip; a large one's by COPY.
        with pipelined(conn) if len(self.parsed) < COPY_FROM else nullcontext():
            self._write_raw(conn, raw_ids)
            self._write_records(conn)
            changes = self._write_messages(conn)
            self._write_activity(conn)
            contacts.write(conn, self.contacts)
            changes[0].write(conn)
            changes[1].write(conn)
            write_marks(conn, jobs)
        return bool(self.events)

    def _leave_out_applied(self, conn) -> None:
        """A body from the spool that is stored already, same endpoint, received time and
        bytes, was applied by a commit whose answer never arrived (the connection broke while
        the database committed) and spooled all the same: it is not applied twice."""
        drained = [p for p in self.parsed if p.job.spooled is not None and p.job.raw_id is None]
        if not drained:
            return
        stored = {
            (row.endpoint, row.received_at, bytes(row.body)): row
            for row in select_in(
                conn,
                RawBody.__table__,
                STORED_RAW_COLUMNS,
                "received_at",
                sorted({p.job.received_at for p in drained}),
            )
        }
        applied = set()
        for p in drained:
            row = stored.get((p.job.endpoint, p.job.received_at, bytes(p.job.body)))
            if row is not None:
                p.job.raw_id = row.id
                p.result = Result(row.http_status, row.outcome, row.id, row.request_id)
                applied.add(id(p))
        self.parsed = [p for p in self.parsed if id(p) not in applied]

    def _take_signatures(self, conn) -> None:
        """A body whose signature was used before is a replay: refused, not applied."""
        signed = [p for p in self.parsed if p.job.signature is not None]
        if not signed:
            return
        settings = current_app.extensions["viberwatch.webhook_auth"]
        replays = replay.take(
            conn, [p.job.signature for p in signed], utcnow(), settings.sign_window
        )
        for p, replayed in zip(signed, replays, strict=False):
            if replayed:
                p.guessed_id, p.item = p.request_id, None
                p.result = Result(
                    401,
                    "refused",
                    None,
                    p.guessed_id,
                    error={
                        "error": f"sign: {replay.REASON}",
                        "field": "sign",
                        "reason": replay.REASON,
                    },
                )

    def _decide(self, p: Parsed) -> None:
        item, at = p.item, p.job.received_at
        msg = self.touched[p.request_id]
        if isinstance(item, payloads.ReceiptIn):
            digest = item.content_hash
            if digest in msg.receipts:
                p.result = Result(200, "duplicate", None, item.request_id)
                fresh = self.new_receipts.get(digest)
                (fresh[1] if fresh else self.receipt_repeats.setdefault(digest, Repeat())).add(at)
                return
            msg.receipts[digest] = receipt_fact(item, at)
            self.new_receipts[digest] = [p, Repeat(1, at)]
            p.result = Result(200, "accepted", None, item.request_id)
            msg.event(at)
            msg.statuses.add(item.status)
            self.events.append((p, "receipt", msg.phone, item.status))
        elif isinstance(item, payloads.ReplyIn):
            digest = item.content_hash
            if digest in msg.replies or digest in self.new_replies:
                p.result = Result(200, "duplicate", None, item.trace_request_id)
                fresh = self.new_replies.get(digest)
                (fresh[1] if fresh else self.reply_repeats.setdefault(digest, Repeat())).add(at)
                return
            self.new_replies[digest] = [p, Repeat(1, at)]
            p.result = Result(200, "accepted", None, item.trace_request_id)
            msg.event(at)
            change = self.contacts.of(item.phone, at)
            change.replied(at)
            change.show(reply_preview(item.text, item.file_name, item.media), at)
            if msg.registration is None and msg.phone is None:
                msg.phone = item.phone
            self.events.append((p, "reply", item.phone, msg.status))
        else:
            payload = {"requestId": item.request_id}
            if msg.registration is not None and msg.registration.same_fields(item):
                p.result = Result(200, "duplicate", None, item.request_id, payload=payload)
                return
            first = msg.registration is None
            msg.registration = Registration(
                item.phone,
                item.text,
                item.appkey,
                item.function_type,
                at if first else msg.registration.registered_at,
            )
            p.result = Result(
                201 if first else 200, "accepted", None, item.request_id, payload=payload
            )
            msg.event(at)
            self.contacts.of(item.phone, at).show(outbound_preview(item.text), at)
            msg.phone = item.phone
            self.events.append((p, "register", item.phone, msg.status))

    def _write_raw(self, conn, ids: list[int]) -> None:
        fresh, again, now = [], [], utcnow()
        for p in self.parsed:
            job, result = p.job, p.result
            reason = result.error["error"] if result.error else None
            if job.raw_id is not None:
                again.append(
                    {
                        "b_id": job.raw_id,
                        "outcome": result.outcome,
                        "http_status": result.http_status,
                        "reason": reason,
                        "request_id": p.request_id,
                        "reprocessed_at": now,
                    }
                )
                result.raw_id = job.raw_id
                continue
            fresh.append(
                {
                    "id": None,
                    "endpoint": job.endpoint,
                    "received_at": job.received_at,
                    "content_type": _text(job.content_type, 255),
                    "body": job.body,
                    "headers": json.dumps(job.headers),
                    "remote_addr": _text(job.remote_addr, 64),
                    "outcome": result.outcome,
                    "http_status": result.http_status,
                    "reason": reason,
                    "request_id": p.request_id,
                    "reprocessed_at": None,
                    "spooled": job.spooled,
                }
            )
        st = _statements()
        if fresh:
            for p, row, raw_id in zip(
                (p for p in self.parsed if p.job.raw_id is None), fresh, ids, strict=False
            ):
                p.result.raw_id = row["id"] = raw_id
            run_many(conn, st.raw, fresh)
        if again:
            run_many(conn, st.raw_again, again)

    def _write_records(self, conn) -> None:
        st = _statements()
        rows = []
        for p, repeat in self.new_receipts.values():
            rows.append(
                receipt_row(p.item, p.result.raw_id, p.job.received_at, repeat.times, repeat.last)
            )
        run_many(conn, st.receipt, rows)
        rows = []
        for digest, (p, repeat) in self.new_replies.items():
            rp, at = p.item, p.job.received_at
            self.touched[rp.trace_request_id].replies[digest] = reply_fact(rp, at, p.result.raw_id)
            rows.append(reply_row(rp, p.result.raw_id, at, repeat.times))
        run_many(conn, st.reply, rows)
        run_many(
            conn,
            st.receipt_again,
            [
                {"b_hash": h, "b_times": r.times, "b_last": r.last}
                for h, r in sorted(self.receipt_repeats.items())
            ],
        )
        run_many(
            conn,
            st.reply_again,
            [{"b_hash": h, "b_times": r.times} for h, r in sorted(self.reply_repeats.items())],
        )

    def _write_messages(self, conn) -> tuple[tally.Moves, rollup.Moves]:
        tally_moves, rollup_moves = tally.Moves(), rollup.Moves()
        updates = []
        for rid, msg in self.touched.items():
            if not (msg.changed or msg.new):
                continue
            row = msg.row
            columns = message_columns(
                msg.receipts.values(),
                msg.replies.values(),
                msg.registration,
                row.created_at,
                self.zone,
            )
            updates.append({"b_rid": rid, **columns})
            after = SimpleNamespace(created_at=row.created_at, **columns)
            if msg.new:
                tally_moves.move(None, tally.key_of(after))
                rollup_moves.move(None, rollup.share_of(after))
            else:
                tally_moves.move(tally.key_of(row), tally.key_of(after))
                rollup_moves.move(rollup.share_of(row), rollup.share_of(after))
            old_phone, phone = (None if msg.new else row.phone), columns["phone"]
            if old_phone and old_phone != phone:
                self.contacts.of(old_phone, msg.last_event_at).messages -= 1
            if phone:
                # The message's whole activity, not only this batch's: another process may
                # have committed a later receipt before the phone was known.
                self.contacts.of(phone, columns["last_activity_at"]).messages += old_phone != phone
        run_many(conn, _statements().message, updates)
        return tally_moves, rollup_moves

    def _write_activity(self, conn) -> None:
        rows = []
        for p, kind, phone, status in self.events:
            item = p.item
            if kind == "receipt":
                summary = f"{item.code} {item.message}"
            elif kind == "reply":
                summary = reply_preview(item.text, item.file_name, item.media)
            else:
                summary = item.text or ""
            rows.append(
                {
                    "kind": kind,
                    "created_at": p.job.received_at,
                    "request_id": p.request_id,
                    "phone": phone,
                    "status": status,
                    "raw_id": p.result.raw_id,
                    "summary": summary[:200],
                }
            )
        run_many(conn, _statements().activity, rows)


# --- transactions ------------------------------------------------------------------------------


class WriteLock:
    """On a SQLite file, a kernel lock (flock) held around each ingest transaction, so the
    writers of several processes queue in the kernel and the next one wakes the moment the
    last one commits, instead of sleeping through SQLite's busy timeout. A no-op elsewhere."""

    def __init__(self, app: Flask):
        self._threads = threading.Lock()
        self._path = None
        self._fd = None
        self._pid = None
        url = db.engines[None].url if app else None
        if (
            url is not None
            and url.get_backend_name() == "sqlite"
            and url.database not in (None, "", ":memory:")
        ):
            self._path = url.database + "-ingest.lock"

    @contextmanager
    def held(self):
        with self._threads:
            if self._path is None:
                yield
                return
            if self._fd is None or self._pid != os.getpid():
                self._fd, self._pid = (
                    os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600),
                    os.getpid(),
                )
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


def write_lock() -> WriteLock:
    app = current_app._get_current_object()
    lock = app.extensions.get("viberwatch.ingest_lock")
    if lock is None:
        lock = app.extensions.setdefault("viberwatch.ingest_lock", WriteLock(app))
    return lock


# On SQLite the writer checkpoints the write-ahead log itself, after every CHECKPOINT_EVERY
# commits and once its write lock is released: SQLite's automatic checkpoint runs inside a
# commit, and its fsync would hold up the writers of every other process.
CHECKPOINT_EVERY = 32


class Link:
    """The writer's own database connection, kept from one batch to the next (no pool
    checkout and liveness ping per batch); dropped after a failure, made again when needed."""

    def __init__(self) -> None:
        self._conn = None
        self._commits = 0

    def connection(self):
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = db.engine.connect()
            if (raw := self._sqlite()) is not None:
                raw.execute("PRAGMA wal_autocheckpoint = 0")
        return self._conn

    def _sqlite(self):
        """The driver's connection under the link when it is SQLite's, else None."""
        if self._conn is not None and self._conn.dialect.name == "sqlite":
            return self._conn.connection.dbapi_connection
        return None

    def committed(self) -> None:
        """Called after each commit, outside the write lock."""
        raw = self._sqlite()
        if raw is None:
            return
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            try:
                # PASSIVE: as far as it can without waiting for readers or writers.
                raw.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                log.debug("checkpointing the write-ahead log failed", exc_info=True)

    def drop(self) -> None:
        if self._conn is not None:
            try:
                raw = None if self._conn.invalidated else self._sqlite()
                if raw is not None:  # back to the pool as every other connection is
                    raw.execute("PRAGMA wal_autocheckpoint = 1000")
            except Exception:  # a connection that failed: it is closed below either way
                log.debug("resetting the writer's connection failed", exc_info=True)
            try:
                self._conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                log.debug("closing the writer's connection failed", exc_info=True)
            self._conn = None


@contextmanager
def _transaction(link: Link | None):
    """A connection in a transaction: the writer's own, or the current session's."""
    if link is None:
        try:
            yield db.session.connection()
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
        return
    conn = link.connection()
    transaction = conn.begin()
    try:
        yield conn
        transaction.commit()
    except BaseException:
        try:
            transaction.rollback()
        finally:
            link.drop()
        raise


@cache
def _mark_statement(dialect: str):
    stmt = insert_for(SpoolMark, dialect)
    return stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"drained_upto": stmt.excluded.drained_upto, "updated_at": stmt.excluded.updated_at},
    )


def write_marks(conn, jobs: list[Job]) -> None:
    """Record, in the transaction that applies them, the last spool record of each file among
    `jobs` (a file is drained in order, so that is how far it has been applied)."""
    upto: dict[str, int] = {}
    for job in jobs:
        if job.spooled is not None:
            name, _, n = job.spooled.rpartition(":")
            upto[name] = max(upto.get(name, 0), int(n))
    if upto:
        now = utcnow()
        run_many(
            conn,
            _mark_statement(conn.dialect.name),
            [
                {"name": name, "drained_upto": n, "updated_at": now}
                for name, n in sorted(upto.items())
            ],
        )


def database_away(exc: BaseException) -> bool:
    """Whether an error says the database cannot take writes now (unreachable, shutting down,
    read-only, full, locked beyond the busy timeout, its file gone), rather than refusing
    this data: the bodies then wait in the spool instead of being answered 503."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(exc, (DisconnectionError, InterfaceError)) or isinstance(
        orig, sqlite3.InterfaceError
    ):
        return True
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return any(
            part in text
            for part in (
                "locked",
                "unable to open",
                "disk i/o",
                "disk is full",
                "readonly",
                "no such table",
            )
        )
    state = getattr(orig, "sqlstate", None)
    if isinstance(orig, psycopg.Error):
        # 08 connection, 53 resources (disk full), 57 operator intervention (shutdown),
        # 25006 read-only transaction (a standby); not 40 (deadlock: a retry will do).
        return (
            (state or "08").startswith(("08", "53", "57"))
            or state == "25006"
            or (isinstance(orig, psycopg.OperationalError) and state is None)
        )
    return isinstance(exc, OperationalError) and not isinstance(
        orig, (sqlite3.Error, psycopg.Error)
    )


def apply_batch(jobs: list[Job], link: Link | None = None) -> bool:
    """Store and apply these bodies in one transaction (on `link`, else on the current
    session) and finish each job with its own answer once committed.

    A batch whose transaction fails is applied again one body at a time, so one body the
    database refuses cannot sink the others; that body is still kept, answered 503. When the
    database cannot be reached at all, returns False and leaves the bodies not yet applied
    unanswered, for the spool. Never raises.
    """
    try:
        zone = sendtime_zone()
        for job in jobs:
            if job.received_at is None:
                job.received_at = utcnow()
        parsed = [parse(job, zone) for job in jobs]
        with write_lock().held(), _transaction(link) as conn:
            begin_writing(conn)
            logged = Batch(parsed, zone).run(conn)
    except Exception as exc:
        if database_away(exc):
            log.warning(
                "the database is away (%s)", type(getattr(exc, "orig", None) or exc).__name__
            )
            return False
        if len(jobs) > 1:
            log.warning(
                "a batch of %d bodies failed (%s); applying them one by one",
                len(jobs),
                type(exc).__name__,
            )
            return all(apply_batch([job], link) for job in jobs)
        return _keep_unapplied(jobs[0], exc)
    batch_committed.send(current_app._get_current_object(), bodies=len(jobs))
    never_applied = sum(len(p.job.body) for p in parsed if not p.result.ok and p.job.raw_id is None)
    if never_applied:
        # Bounded by REJECTED_KEEP_BYTES / _DAYS before anyone is answered.
        retention.kept(never_applied)
    for p in parsed:
        p.job.finish(p.result)
    if logged:
        activity_committed.send(current_app._get_current_object())
    if link is not None:
        link.committed()
    return True


def _keep_unapplied(job: Job, exc: Exception) -> bool:
    """The effect could not be committed (a constraint, a bug): keep the body on its own so
    `reprocess` can apply it later, and answer 503 so the sender retries. False when the
    database cannot be reached to keep it either."""
    reason = f"not applied: {type(exc).__name__}"
    log.error("ingest of a %s body failed", job.endpoint, exc_info=exc)
    if job.raw_id is not None:
        job.finish(unavailable(reason, job.raw_id))
        return True
    try:
        raw = store_raw(
            job.endpoint,
            job.body,
            job.content_type,
            job.headers,
            job.remote_addr,
            "rejected",
            503,
            reason,
            received_at=job.received_at,
            spooled=job.spooled,
        )
        write_marks(db.session.connection(), [job])
        db.session.commit()
        retention.kept(len(job.body))
    except Exception as again:
        db.session.rollback()
        if database_away(again):
            return False
        log.exception("a %s body could not be kept either", job.endpoint)
        job.finish(unavailable(f"{reason}; not kept"))
        return True
    job.finish(unavailable(reason, raw.id))
    return True


def queued(p: Parsed) -> Result:
    """The answer to a valid body that waits in the spool: success for a webhook (NXCLOUD
    needs no more), 202 for the API."""
    if p.job.endpoint == "register":
        return Result(202, "queued", None, p.request_id, payload={"requestId": p.request_id})
    return Result(200, "queued", None, p.request_id)


class Writer:
    """The ingest writer of one process: a thread applying every waiting body in batches, and
    while the database is away, appending them to this process's spool instead (a drainer
    thread applies the spool, in order, once the database answers again)."""

    def __init__(self, app: Flask):
        self.app = app
        self.max_batch = max(1, int(app.config["INGEST_BATCH_MAX"]))
        self.wait_seconds = float(app.config["INGEST_WAIT_TIMEOUT"])
        self.retry_seconds = float(app.config["SPOOL_RETRY_SECONDS"])
        self.folder = Path(app.config["SPOOL_FOLDER"] or os.path.join(app.instance_path, "spool"))
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pid = os.getpid()
        # While set, every body goes to this file, so the spool keeps the order of arrival.
        # Set by the writer, cleared by the drainer, both under the lock.
        self._spool: spool.SpoolFile | None = None
        # Reentrant: the drainer, catching up, applies the last bodies with appends held off.
        self._spool_lock = threading.RLock()
        self._drainer: threading.Thread | None = None
        self._drainer_stop = threading.Event()
        # Set when a body is spooled: the drainer, waiting, looks again at once.
        self._drain_wake = threading.Event()
        self._keys: spool.Keys | None = None
        self._checked_at = 0.0
        # Set while the last bodies could be neither applied nor spooled (answered 503).
        self.cannot_store = False
        # Hands a body to the server's committer process, when it has one
        # (app/records/committer.py); None: this process applies its bodies itself.
        from . import committer

        path = committer.address()
        self._hand_over = partial(committer.submit, path) if path else None

    def submit(self, job: Job) -> Result:
        """Hand a body over and wait for its answer."""
        if self._hand_over is not None and job.received_at is None:
            result = self._hand_over(job, self.wait_seconds)
            if result is not None:
                answered(self.app, result)
                return result
        with self._cond:
            if self._pid != os.getpid():  # a fork inherited this object, not its threads
                self._pid, self._pending, self._thread = os.getpid(), [], None
                self._spool, self._drainer = None, None
            if job.received_at is None:
                # Taken under the lock, so arrival order and received times agree.
                stamp_arrival(job)
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
                self._thread.start()
            self._cond.notify()
        if not job.done.wait(self.wait_seconds):
            return unavailable(NOT_IN_TIME)
        return job.result

    def waiting(self) -> int:
        """Bodies handed over and not yet taken into a batch."""
        with self._cond:
            return len(self._pending)

    def _take(self) -> list[Job]:
        with self._cond:
            while not self._pending and not self._stopping:
                if not self._cond.wait(IDLE_SECONDS):
                    break
            if not self._pending:
                self._thread = None
                return []
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            return batch

    def _run(self) -> None:
        with self.app.app_context():
            link = Link()
            try:
                while True:
                    batch = self._take()
                    if not batch:
                        return
                    self.apply(batch, link)
            finally:
                link.drop()
                with self._cond:
                    if self._thread is threading.current_thread():
                        self._thread = None

    def apply(self, jobs: list[Job], link: Link) -> None:
        """Apply (or spool) these bodies, at most INGEST_BATCH_MAX to a transaction; every one
        is answered, even if this raises."""
        try:
            for start in range(0, len(jobs), self.max_batch):
                self._handle(jobs[start : start + self.max_batch], link)
        finally:
            for job in jobs:
                if not job.done.is_set():
                    job.finish(unavailable("not applied: the writer failed"))
            db.session.remove()

    def _handle(self, batch: list[Job], link: Link) -> None:
        while True:
            if self._spool is None:
                if apply_batch(batch, link):
                    self.cannot_store = False
                    return
                batch = [job for job in batch if not job.done.is_set()]
                if self._append(batch, start=True):
                    return
            elif self._append(batch, start=False):
                return
            # The drainer emptied the spool in between: the database is back.

    @property
    def keys(self) -> spool.Keys:
        """The database this server's spool files belong to, and the key that signs them."""
        if self._keys is None:
            self._keys = spool.Keys.of(
                str(self.app.config["SQLALCHEMY_DATABASE_URI"]), self.app.config["SECRET_KEY"]
            )
        return self._keys

    def _append(self, jobs: list[Job], *, start: bool) -> bool:
        """Spool the bodies, durably, and answer them; False when no spool is active and
        `start` does not ask for one."""
        zone = sendtime_zone()
        # Validated now (no database needed) so that each gets the answer it would get; all
        # are spooled, valid or not, and validated again when applied.
        parsed = [parse(job, zone) for job in jobs]
        with self._spool_lock:
            if self._spool is None and not start:
                return False
            try:
                started = self._spool is None
                if self._spool is not None and self._spool.broken:
                    # A refused write could not be cut back: that file is left to be drained
                    # as one whose writer ended (its lock goes with it), and a new one starts.
                    self._spool.close()
                    self._spool = None
                if self._spool is None:
                    self._spool = spool.SpoolFile(spool.ensure(self.folder), self.keys)
                self._spool.append(
                    [
                        (
                            j.endpoint,
                            j.received_at,
                            j.content_type,
                            j.headers,
                            j.remote_addr,
                            j.body,
                        )
                        for j in jobs
                    ]
                )
            except OSError as exc:
                spool_log.critical(
                    "the database is away and the spool cannot be written (%s): bodies "
                    "answered 503",
                    exc,
                    extra={"event": "spool_failed", "bodies": len(jobs)},
                )
                self.cannot_store = True
                for job in jobs:
                    job.finish(
                        unavailable(
                            "not applied: the database is away and the spool cannot be written"
                        )
                    )
                return True
            self.cannot_store = False
            if started:
                spool_log.warning(
                    "spooling started: the database is away; bodies wait on disk",
                    extra={
                        "event": "spool_started",
                        "spool": str(self._spool.path),
                        "bodies": len(jobs),
                    },
                )
        for p in parsed:
            p.job.finish(p.result if p.result is not None else queued(p))
        self._drain_wake.set()
        self.ensure_draining(force=True)
        return True

    def spool_status(self) -> spool.Status:
        """Bodies waiting in this server's spool files (every process's), read from disk."""
        return spool.status(self.folder, self.keys) if self.folder.is_dir() else spool.Status()

    def spool_writable(self) -> bool:
        try:
            return os.access(spool.ensure(self.folder), os.W_OK)
        except OSError:
            return False

    # --- draining ------------------------------------------------------------------------------

    def ensure_draining(self, force: bool = False) -> None:
        """Start the drainer when this process spools, or (checked at most every
        SPOOL_RETRY_SECONDS) when a spool left by a process that ended is waiting."""
        now = time.monotonic()
        if not force and now - self._checked_at < max(self.retry_seconds, 1.0):
            return
        self._checked_at = now
        with self._cond:
            if self._drainer is not None and self._drainer.is_alive():
                return
            if not force:
                if not self.folder.is_dir():
                    return
                spool.report_others(self.folder, self.keys)
                if not spool.files(self.folder, self.keys):
                    return
            self._drainer_stop.clear()
            self._drainer = threading.Thread(
                target=self._drain_forever, name="ingest-drainer", daemon=True
            )
            self._drainer.start()

    def _drain_forever(self) -> None:
        with self.app.app_context():
            link = Link()
            try:
                while not self._drainer_stop.is_set():
                    self._drain_wake.clear()
                    outcome = drain(self.folder, link, self.max_batch, own=self._own_file())
                    if outcome == "done" and self._spool is None:
                        return
                    if outcome != "progress":
                        # Nothing to apply now (the database is away, or the own file has
                        # nothing new): wait for a new body or the next attempt, not spin.
                        self._drain_wake.wait(self.retry_seconds)
            finally:
                link.drop()
                db.session.remove()

    def _own_file(self) -> OwnFile:
        return OwnFile(self)

    def stop(self, timeout: float = 30.0) -> None:
        """Apply (or spool) what is waiting, then end the threads (a process about to exit)."""
        with self._cond:
            thread, drainer = self._thread, self._drainer
            self._stopping = True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
        self._drainer_stop.set()
        self._drain_wake.set()
        if drainer is not None:
            drainer.join(timeout)
        with self._cond:
            self._stopping = False


class OwnFile:
    """The drainer's view of its own process's active spool file."""

    def __init__(self, writer: Writer):
        self.writer = writer

    @property
    def path(self) -> Path | None:
        current = self.writer._spool
        return current.path if current is not None else None

    def reader(self, keys: spool.Keys, after: int) -> spool.Reader:
        """A reader from where the last drain of the file stopped, to the end of its whole
        records (the writer may be appending past them)."""
        with self.writer._spool_lock:
            current = self.writer._spool
            size, start = (current.size, current.drained_offset) if current else (0, 0)
        return spool.Reader(current.path, keys, after, upto=size, start=start)

    def behind(self) -> int:
        """Bytes appended that the drainer has not applied yet."""
        with self.writer._spool_lock:
            current = self.writer._spool
            return current.size - current.drained_offset if current is not None else 0

    def held(self):
        """No body is appended while this is held (the drainer catching up)."""
        return self.writer._spool_lock

    def progress(self, drained: int, oldest: datetime | None, offset: int, damaged: int) -> None:
        """Bodies applied up to record `drained`, whose line ends at `offset`."""
        with self.writer._spool_lock:
            current = self.writer._spool
            if current is not None:
                current.drained, current.oldest = drained, oldest
                spool.write_status(current.path, current.appended, drained, oldest)
        self.advance(offset, damaged)

    def advance(self, offset: int, damaged: int) -> None:
        """The file read (and what there was to apply applied) up to `offset`, `damaged`
        lines of it skipped."""
        with self.writer._spool_lock:
            current = self.writer._spool
            if current is not None and offset > current.drained_offset:
                current.drained_offset = offset
                current.damaged_seen += damaged

    def finish_if_drained(self, drained: int, reader: spool.Reader) -> bool:
        """Stop spooling when every body appended has been applied (under the lock the writer
        appends under, so none can slip in between)."""
        with self.writer._spool_lock:
            current = self.writer._spool
            # Every whole line read, damaged ones too: nothing more will come of it.
            if current is None or current.size != reader.consumed:
                return False
            current.close()
            self.writer._spool = None
            if reader.whole and not current.damaged_seen:
                spool.remove(current.path)
                forget_mark(current.name)
            else:
                reader.damaged = current.damaged_seen
                spool.keep_damaged(current.path, reader)
        spool_log.info(
            "spool drained: every body applied; back to writing directly",
            extra={"event": "spool_drained", "spool": str(current.path), "bodies": drained},
        )
        return True


def _mark_of(name: str) -> int:
    mark = db.session.execute(
        db.select(SpoolMark.drained_upto).where(SpoolMark.name == name)
    ).scalar()
    db.session.rollback()
    return mark or 0


def forget_mark(name: str) -> None:
    """After its file is gone (never before: the mark is what stops a second application)."""
    try:
        db.session.execute(db.delete(SpoolMark).where(SpoolMark.name == name))
        db.session.commit()
    except Exception:  # a leftover mark of a deleted file is harmless
        db.session.rollback()
        log.warning("the mark of spool %s stays (the database refused its deletion)", name)


def drain(
    folder: Path,
    link: Link | None,
    batch_max: int,
    own: OwnFile | None = None,
    keys: spool.Keys | None = None,
) -> str:
    """Apply every spool file of this database in `folder` that is this process's own or
    whose process has ended, in order. "done" when nothing is left that can be drained now,
    "away" when the database stopped answering, "progress" when this process's own file
    received more meanwhile, "idle" when it is still being written and had nothing new."""
    if not folder.is_dir():
        return "done"
    keys = keys or writer_of(current_app._get_current_object()).keys
    spool.report_others(folder, keys)
    own_path = own.path if own is not None else None
    for path in spool.files(folder, keys):
        mine = path == own_path
        fd = None if mine else spool.claim(path)
        if not mine and fd is None:
            continue  # its process still runs and drains it
        try:
            outcome = _drain_file(
                path, spool.Reader(path, keys), link, batch_max, own if mine else None
            )
        finally:
            if fd is not None:
                os.close(fd)
        if outcome != "done":
            return outcome
    return "done"


def drain_file(
    path: Path, batch_max: int, *, any_database: bool, unsigned: bool
) -> tuple[str, spool.Reader]:
    """Apply one spool file named by an operator: one kept as damaged, one of this server
    reached under another address (`any_database`), or one an older version wrote without
    signatures (`unsigned`). "busy" while its process still runs; the reader tells what it
    took and skipped."""
    keys = writer_of(current_app._get_current_object()).keys
    reader = spool.Reader(path, keys, any_database=any_database, unsigned=unsigned)
    fd = spool.claim(path)
    if fd is None:
        return "busy", reader
    try:
        return _drain_file(path, reader, None, batch_max, None), reader
    finally:
        os.close(fd)


# Bytes the drainer may find appended behind it and still apply with appends held off, so
# that a steady flow of bodies, each spooled as the one before it is applied, ends.
CATCH_UP_BYTES = 256 * 1024


def _drain_file(
    path: Path, reader: spool.Reader, link: Link | None, batch_max: int, own: OwnFile | None
) -> str:
    """Apply a file's records after its mark (`own`: this process's file, being written)."""
    name = spool.name_of(path)
    try:
        after = _mark_of(name)
    except Exception as exc:
        db.session.rollback()
        if database_away(exc):
            return "away"
        raise
    if own is not None:
        reader = own.reader(reader.keys, after)
    reader.after = after
    outcome, total = _apply_records(path, reader, link, batch_max, own, after)
    if outcome != "done":
        return outcome
    if reader.foreign:
        return "done"  # its header names another database: left as it is (reported)
    if own is None:
        if reader.whole:
            spool.remove(path)
            forget_mark(name)
            spool_log.info(
                "spool drained: it was left by a process that ended",
                extra={"event": "spool_drained", "spool": str(path), "bodies": total},
            )
        elif not path.name.endswith(spool.DAMAGED_SUFFIX):
            spool.keep_damaged(path, reader)
        return "done"
    if own.finish_if_drained(total, reader):
        return "done"
    if own.behind() > CATCH_UP_BYTES:
        return "progress" if reader.taken else "idle"
    # Bodies keep arriving, each spooled while the one before it is applied: the last few are
    # applied with appends held off (they wait a moment), then the writer goes direct again.
    with own.held():
        rest = own.reader(reader.keys, total)
        outcome, total = _apply_records(path, rest, link, batch_max, own, total)
        if outcome != "done":
            return outcome
        own.finish_if_drained(total, rest)
    return "done"


def _apply_records(
    path: Path,
    reader: spool.Reader,
    link: Link | None,
    batch_max: int,
    own: OwnFile | None,
    total: int,
) -> tuple[str, int]:
    """Apply what a reader hands out, in chunks; ("done" | "away", the last record's number)."""
    name = spool.name_of(path)
    chunk: list[Job] = []
    signing = bool(current_app.extensions["viberwatch.webhook_auth"].sign_secret)
    damaged = 0  # lines skipped up to the last record of the chunks applied
    for record in reader:
        chunk.append(
            Job(
                record.endpoint,
                record.body,
                record.content_type,
                record.headers,
                record.remote_addr,
                record.received_at,
                spooled=f"{name}:{record.n}",
                signature=replay.Signature.of(record.headers) if signing else None,
            )
        )
        total = record.n
        if len(chunk) >= batch_max:
            if not _drain_chunk(path, chunk, link, own, reader.consumed, reader.damaged - damaged):
                return "away", total
            damaged, chunk = reader.damaged, []
    if chunk:
        if not _drain_chunk(path, chunk, link, own, reader.consumed, reader.damaged - damaged):
            return "away", total
    elif own is not None:
        # Lines read after the last record applied (damaged, or applied before): passed.
        own.advance(reader.consumed, reader.damaged - damaged)
    return "done", total


def _drain_chunk(
    path: Path, jobs: list[Job], link: Link | None, own: OwnFile | None, offset: int, damaged: int
) -> bool:
    if not apply_batch(jobs, link):
        return False
    last = int(jobs[-1].spooled.rpartition(":")[2])
    # The bodies still waiting arrived after the last one applied.
    oldest = jobs[-1].received_at
    if own is not None:
        own.progress(last, oldest, offset, damaged)
    elif path.name.endswith(spool.SUFFIX):
        spool.mark_drained(path, last, oldest)
    return True


def answered(app: Flask, result: Result) -> None:
    """A body this process handed to the server's committer was answered: an accepted one
    wakes this process's live tailer (the committer has published it to the others)."""
    if result.outcome == "accepted":
        activity_answered.send(app)


def writer_of(app: Flask) -> Writer:
    return app.extensions["viberwatch.ingest"]


def new_job(
    endpoint: str,
    body: bytes,
    content_type: str | None,
    headers,
    remote_addr: str | None,
    received_at: datetime | None = None,
    signature: replay.Signature | None = None,
) -> Job:
    assert endpoint in ENDPOINTS
    return Job(
        endpoint,
        body,
        content_type,
        kept_headers(headers),
        remote_addr,
        received_at,
        signature=signature,
    )


def ingest(
    endpoint: str,
    body: bytes,
    content_type: str | None,
    headers,
    remote_addr: str | None = None,
    *,
    received_at: datetime | None = None,
    signature: replay.Signature | None = None,
) -> Result:
    """Store a body verbatim and apply it; answered once both are committed. A `signature`
    (verified) is taken in the same transaction: used before, the body is refused as a replay."""
    job = new_job(endpoint, body, content_type, headers, remote_addr, received_at, signature)
    result = writer_of(current_app._get_current_object()).submit(job)
    # Committed by the writer's session: objects this thread's session loaded are stale now.
    if db.session.registry.has():
        db.session.expire_all()
    return result


def store_raw(
    endpoint: str,
    body: bytes,
    content_type: str | None,
    headers: dict,
    remote_addr: str | None,
    outcome: str,
    http_status: int,
    reason: str | None = None,
    received_at: datetime | None = None,
    spooled: str | None = None,
) -> RawBody:
    raw = RawBody(
        endpoint=endpoint,
        received_at=received_at or utcnow(),
        content_type=_text(content_type, 255),
        body=body,
        headers=json.dumps(kept_headers(headers)),
        remote_addr=_text(remote_addr, 64),
        outcome=outcome,
        http_status=http_status,
        reason=reason,
        spooled=spooled,
    )
    db.session.add(raw)
    db.session.flush()
    return raw


def refuse(
    endpoint: str,
    body: bytes,
    content_type: str | None,
    headers: dict,
    remote_addr: str | None,
    http_status: int,
    reason: str,
) -> RawBody:
    """Keep a body whose request was refused before validation (authentication, size)."""
    raw = store_raw(
        endpoint, body, content_type, headers, remote_addr, "refused", http_status, reason
    )
    db.session.commit()
    retention.kept(len(body))
    return raw


def reprocess(raw_id: int) -> Result:
    """Run a rejected or refused body through validation again, as if it arrived when it did."""
    raw = db.session.execute(db.select(RawBody.__table__).where(RawBody.id == raw_id)).one()
    if raw.outcome not in ("rejected", "refused"):
        return Result(raw.http_status, raw.outcome, raw.id, raw.request_id)
    if raw.outcome == "refused":
        from ..webhooks.auth import still_refused  # it imports this module

        refused = still_refused(
            db.session.get(RawBody, raw.id)
        )  # authentication again, never around it
        if refused is not None:
            return refused
    job = Job(
        raw.endpoint,
        raw.body,
        raw.content_type,
        json.loads(raw.headers or "{}"),
        raw.remote_addr,
        raw.received_at,
        raw_id=raw.id,
    )
    if not apply_batch([job]):
        return unavailable("not applied: the database is away", raw.id)
    return job.result


def rejected_ids(include_refused: bool = False) -> list[int]:
    outcomes = ["rejected", "refused"] if include_refused else ["rejected"]
    return list(
        db.session.execute(
            db.select(RawBody.id).where(RawBody.outcome.in_(outcomes)).order_by(RawBody.id)
        ).scalars()
    )


def init_app(app: Flask) -> None:
    writer = app.extensions["viberwatch.ingest"] = Writer(app)
    try:
        # At start: a folder others may write into is closed, or (not ours) refused.
        spool.ensure(writer.folder)
    except spool.SpoolError:
        raise
    except OSError as exc:  # not there to be made: bodies are answered 503 if it is needed
        spool_log.error("the spool folder %s cannot be made (%s)", writer.folder, exc)

    @app.context_processor
    def spool_banner():
        return {"spool_waiting": writer.spool_status}

    @app.before_request
    def drain_what_was_left():
        # A spool left by a process that ended is drained by the first live one to notice.
        try:
            writer.ensure_draining()
        except OSError:
            log.exception("the spool folder cannot be read")


def stop(app: Flask) -> None:
    writer = app.extensions.get("viberwatch.ingest")
    if writer is not None:
        writer.stop()
