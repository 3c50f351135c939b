"""One ingest batch, inside the caller's transaction: the messages not stored yet are created
with their whole rows, the others locked and what is stored about them read (`read_messages`);
each body is decided (accepted, duplicate or rejected, each its own answer) after its message's
earlier ones, on what is stored about that message; then, in arrival order, raw bodies,
receipts and replies, the changed messages' columns (`derivation.message_columns`), activity
rows, contacts, the hot rows (tally and rollups, once per key in key order) and the spool marks
are written.
Status changes go only through `status.fold`, over the whole set of a message's receipts, so
any arrival order, batching or concurrency gives the same record. No `request` here.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from functools import cache
from types import SimpleNamespace

from sqlalchemy import bindparam, case

from ..core import payloads
from ..core.errors import error_body
from ..core.status import PRECEDENCE
from ..core.times import utcnow
from ..records import contacts, replay, rollup, tag_rollup, tally
from ..records.derivation import (
    COLUMNS,
    Registration,
    message_columns,
    outbound_preview,
    receipt_fact,
    receipt_row,
    reply_fact,
    reply_preview,
    reply_row,
    tags_of,
)
from ..records.models import (
    Activity,
    Message,
    MessageTag,
    RawBody,
    Receipt,
    Reply,
    SpoolMark,
    UTCDateTime,
    db,
)
from ..records.sqlutil import (
    COPY_FROM,
    insert_for,
    pipelined,
    run_many,
    select_in,
)
from .jobs import Job, Parsed, Result
from .stored import (
    STORED_RAW_COLUMNS,
    Stored,
    read_messages,
    registration_of,
)


@dataclass(eq=False)
class Touched:
    """One message a batch touches: what is stored, and what the batch adds."""

    row: object | None  # the locked row as stored; None for a message this batch creates
    created_at: datetime
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

    @classmethod
    def created(cls, at: datetime) -> Touched:
        """A message first heard of at `at`, with nothing stored."""
        return cls(None, at, {}, {}, None)

    @classmethod
    def of(cls, row, stored: Stored) -> Touched:
        """A stored message: its locked row, and its receipts and replies as read."""
        rid = row.request_id
        return cls(
            row,
            row.created_at,
            stored.receipts.get(rid, {}),
            stored.replies.get(rid, {}),
            registration_of(row),
        )

    @property
    def new(self) -> bool:
        return self.row is None

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
def _tag_statement(dialect: str):
    return insert_for(MessageTag, dialect).on_conflict_do_nothing(
        index_elements=["request_id", "tag"]
    )


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


def _json_once(made: dict[tuple, str], value: dict) -> str:
    """`value` as JSON, made once for equal values among those given `made`."""
    key = tuple(value.items())
    try:
        text = made.get(key)
    except TypeError:  # a value that is not a string: made each time
        return json.dumps(value)
    if text is None:
        text = made[key] = json.dumps(value)
    return text


def bounded_text(value: str | None, limit: int) -> str | None:
    """A header value fit for a bounded text column (PostgreSQL text cannot hold NUL)."""
    return None if value is None else value.replace("\x00", "\ufffd")[:limit]


class IngestBatch:
    """Applies validated bodies inside the caller's transaction; `run` returns True when an
    event joined the activity log. Answers are in each Parsed.result (given out after commit)."""

    def __init__(self, parsed: list[Parsed], zone: tzinfo, sign_window: int):
        self.parsed = parsed
        self.zone = zone
        self.sign_window = sign_window  # seconds a signature is remembered as used (twice)
        # request_id -> the columns of each message this batch created (written already).
        self.created: dict[str, dict] = {}
        self._forget_decisions()

    def _forget_decisions(self) -> None:
        """What deciding the bodies gathers; forgotten when they are decided again."""
        self.touched: dict[str, Touched] = {}
        self.new_receipts: dict[str, list] = {}  # content_hash -> [Parsed, Repeat]
        self.new_replies: dict[str, list] = {}
        self.receipt_repeats: dict[str, Repeat] = {}
        self.reply_repeats: dict[str, Repeat] = {}
        # Accepted bodies in arrival order: (body, kind, phone, status) for the activity log.
        self.events: list[tuple[Parsed, str, str | None, str | None]] = []
        self.contacts = contacts.Changes()
        # (requestId, tag) of the registrations accepted: rows of message_tag, if not there.
        self.new_tags: set[tuple[str, str]] = set()

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
        stored = read_messages(
            conn,
            sorted(first_heard),
            lambda ids: self._new_rows(valid, {rid: first_heard[rid] for rid in ids}),
            sum(p.job.raw_id is None for p in self.parsed),
        )
        # A message's bodies are decided on what is stored about it and on each other only:
        # those of the messages created are decided (above), the stored ones' now. Should
        # another transaction have created one found new meanwhile, all are decided again.
        decided = stored.created if len(stored.created) == len(self.touched) else set()
        if not decided:
            self._forget_decisions()
        self.touched = {
            rid: self.touched[rid]
            if rid in decided
            else Touched.of(stored.rows[rid], stored)
            if rid in stored.rows
            else Touched.created(at)
            for rid, at in first_heard.items()
        }
        for p in valid:
            if p.request_id not in decided:
                self._decide(p)
        self.created = {rid: self.created[rid] for rid in stored.created}
        self._in_arrival_order()
        # A small batch's writes go to PostgreSQL in one round trip; a large one's by COPY.
        with pipelined(conn) if len(self.parsed) < COPY_FROM else nullcontext():
            self._write_raw(conn, stored.raw_ids)
            self._write_records(conn)
            changes = self._write_messages(conn)
            self._write_activity(conn)
            self._touch_contacts()
            contacts.write(conn, self.contacts)
            for moves in changes:
                moves.write(conn)
            write_marks(conn, jobs)
        return bool(self.events)

    def _new_rows(self, valid: list[Parsed], first_heard: dict[str, datetime]) -> list[dict]:
        """The whole row of each message in `first_heard` were it new, in requestId order: its
        bodies decided with nothing stored (when it is new, these are the decisions)."""
        self.touched = {rid: Touched.created(at) for rid, at in first_heard.items()}
        for p in valid:
            if p.request_id in self.touched:
                self._decide(p)
        # A new reply's raw id comes later (after the locks): it follows every stored body's
        # and the batch's earlier ones, which is all the order of a message's replies needs.
        after = max((p.job.raw_id or 0 for p in self.parsed), default=0) + 1
        order = {
            id(p): p.job.raw_id if p.job.raw_id is not None else after + i
            for i, p in enumerate(self.parsed)
        }
        for digest, (p, _repeat) in self.new_replies.items():
            self.touched[p.request_id].replies[digest] = reply_fact(
                p.item, p.job.received_at, order[id(p)]
            )
        rows = []
        for rid in sorted(self.touched):
            msg = self.touched[rid]
            self.created[rid] = self._columns(msg)
            rows.append({"request_id": rid, "created_at": msg.created_at, **self.created[rid]})
        return rows

    def _in_arrival_order(self) -> None:
        """The events, and the receipts and replies first received, in the order the bodies
        arrived (the messages' bodies were decided in two groups)."""
        position = {id(p): i for i, p in enumerate(self.parsed)}
        self.events.sort(key=lambda event: position[id(event[0])])
        for kept in (self.new_receipts, self.new_replies):
            ordered = sorted(kept.items(), key=lambda item: position[id(item[1][0])])
            kept.clear()
            kept.update(ordered)

    def _touch_contacts(self) -> None:
        """Each reply and registration accepted, in arrival order, touches its phone's
        contact: a reply counts there, and each offers its preview (the later arrival wins)."""
        for p, kind, phone, _status in self.events:
            item, at = p.item, p.job.received_at
            if kind == "reply":
                change = self.contacts.of(phone, at)
                change.replied(at)
                change.show(reply_preview(item.text, item.file_name, item.media), at)
            elif kind == "register":
                self.contacts.of(phone, at).show(outbound_preview(item.text), at)

    def _columns(self, msg: Touched) -> dict:
        """Every derived column of `msg`, from all that is known of it now."""
        return message_columns(
            msg.receipts.values(), msg.replies.values(), msg.registration, msg.created_at, self.zone
        )

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
        replays = replay.take(conn, [p.job.signature for p in signed], utcnow(), self.sign_window)
        for p, replayed in zip(signed, replays, strict=False):
            if replayed:
                p.guessed_id, p.item = p.request_id, None
                p.result = Result(
                    401, "refused", None, p.guessed_id, error=error_body("sign", replay.REASON)
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
            if msg.registration is None and msg.phone is None:
                msg.phone = item.phone
            self.events.append((p, "reply", item.phone, msg.status))
        else:
            payload = {"requestId": item.request_id}
            if msg.registration is not None and msg.registration.same_fields(item):
                p.result = Result(200, "duplicate", None, item.request_id, payload=payload)
                return
            first = msg.registration is None
            after = Registration.first(item, at) if first else msg.registration.then(item, at)
            if len(after.tags) > payloads.MAX_TAGS:
                p.result = Result(
                    422,
                    "rejected",
                    None,
                    item.request_id,
                    error=error_body("tags", f"a message has at most {payloads.MAX_TAGS} tags"),
                )
                return
            self.new_tags.update((item.request_id, tag) for tag in item.tags)
            msg.registration = after
            p.result = Result(
                201 if first else 200, "accepted", None, item.request_id, payload=payload
            )
            msg.event(at)
            msg.phone = item.phone
            self.events.append((p, "register", item.phone, msg.status))

    def _write_raw(self, conn, ids: list[int]) -> None:
        fresh, again, now = [], [], utcnow()
        headers: dict[tuple, str] = {}  # the items of one bulk request share its headers
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
                    "content_type": bounded_text(job.content_type, 255),
                    "body": job.body,
                    "headers": _json_once(headers, job.headers),
                    "remote_addr": bounded_text(job.remote_addr, 64),
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
        run_many(
            conn,
            _tag_statement(conn.dialect.name),
            [{"request_id": rid, "tag": tag} for rid, tag in sorted(self.new_tags)],
        )

    def _write_messages(self, conn) -> tuple[tally.Moves, rollup.Moves, tag_rollup.Moves]:
        tally_moves, rollup_moves, tag_moves = tally.Moves(), rollup.Moves(), tag_rollup.Moves()
        updates = []
        for rid, msg in self.touched.items():
            row = msg.row
            if msg.new:
                columns = self.created[rid]
            elif msg.changed:
                columns = self._columns(msg)
                updates.append({"b_rid": rid, **columns})
            else:
                continue
            after = SimpleNamespace(created_at=msg.created_at, **columns)
            tags = tags_of(columns["tags"])
            if msg.new:
                tally_moves.move(None, tally.key_of(after))
                rollup_moves.move(None, rollup.share_of(after))
                if tags:
                    tag_moves.move((), None, tags, tag_rollup.share_of(after))
            else:
                tally_moves.move(tally.key_of(row), tally.key_of(after))
                rollup_moves.move(rollup.share_of(row), rollup.share_of(after))
                if tags:
                    tag_moves.move(
                        tags_of(row.tags),
                        tag_rollup.share_of(row),
                        tags,
                        tag_rollup.share_of(after),
                    )
            old_phone, phone = (None if msg.new else row.phone), columns["phone"]
            if old_phone and old_phone != phone:
                self.contacts.of(old_phone, msg.last_event_at).messages -= 1
            if phone:
                # The message's whole activity, not only this batch's: another process may
                # have committed a later receipt before the phone was known.
                self.contacts.of(phone, columns["last_activity_at"]).messages += old_phone != phone
        run_many(conn, _statements().message, updates)
        return tally_moves, rollup_moves, tag_moves

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
