"""Realistic data at scale: messages, receipts, replies and contacts, as ingest would store them.

Every event gets its raw body (so `viberwatch rebuild` can recompute everything from the
raw record), its receipt or reply row and its activity row; each message's columns come from
`derivation.message_columns`, exactly as ingest derives them. Rows go in
with bulk inserts (`sqlutil.bulk_insert`), one transaction per batch of messages.

With `tags`, the messages carry campaign tags as real sending does
(`seed_content.CampaignPlan`): each campaign is sent in a window of its own of a few hours to
a day, the rest is a steady flow (partly one-time codes, tag `otp`), a few campaign messages
also name a segment.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from sqlalchemy import func, text

from ..core import payloads
from ..core.status import ReceiptFact, fold
from ..core.times import utcnow
from ..records import contacts
from ..records.derivation import (
    Registration,
    ReplyFact,
    message_columns,
    outbound_preview,
    reply_preview,
)
from ..records.models import (
    Activity,
    Message,
    MessageTag,
    RawBody,
    Receipt,
    Reply,
    db,
)
from ..records.sqlutil import bulk_insert
from .seed_content import (
    APPKEYS,
    END_MARGIN,
    FAILURES,
    FUNCTION_TYPES,
    HEADERS,
    MAX_CAMPAIGNS,
    REPLIES,
    SENDTIME_FORMAT,
    TEMPLATES,
    CampaignPlan,
    seeded_reply,
    seeded_text,
)


@dataclass
class SeedBatch:
    raw: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    receipts: list = field(default_factory=list)
    replies: list = field(default_factory=list)
    activity: list = field(default_factory=list)
    tags: list = field(default_factory=list)


class Seeder:
    """Generates one message at a time, with ids continuing after what the tables hold."""

    def __init__(
        self,
        *,
        count: int,
        replies: int,
        days: float,
        zone: tzinfo,
        rng: random.Random,
        now: datetime,
        ids: dict[str, int],
        campaigns: int = 0,
    ):
        self.rng = rng
        self.zone = zone
        self.now = now
        self.count = count
        self.reply_share = min(1.0, replies / count) if count else 0.0
        self.start = now - timedelta(days=days)
        # Messages are spread evenly in time so raw and activity ids roughly follow the clock.
        self.step = (timedelta(days=days) - END_MARGIN) / max(count, 1)
        self.ids = ids
        # Its own random stream, so that without campaigns nothing else changes.
        self.plan = (
            CampaignPlan(
                campaigns, count, timedelta(days=days) - END_MARGIN, random.Random(rng.random())
            )
            if campaigns
            else None
        )
        self.phones = [f"79{rng.randrange(10**9):09d}" for _ in range(max(1, count // 5))]
        self.contacts = contacts.Changes()

    def _next(self, table: str) -> int:
        self.ids[table] += 1
        return self.ids[table]

    def _raw(
        self,
        batch: SeedBatch,
        endpoint: str,
        at: datetime,
        data: dict,
        rid: str,
        outcome: str = "accepted",
        http_status: int = 200,
    ) -> int:
        raw_id = self._next("raw_body")
        batch.raw.append(
            {
                "id": raw_id,
                "endpoint": endpoint,
                "received_at": at,
                "content_type": "application/json",
                "body": json.dumps(data).encode(),
                "headers": HEADERS,
                "remote_addr": "127.0.0.1",
                "outcome": outcome,
                "http_status": http_status,
                "reason": None,
                "request_id": rid,
                "reprocessed_at": None,
            }
        )
        return raw_id

    def _activity(
        self,
        batch: SeedBatch,
        kind: str,
        at: datetime,
        raw_id: int,
        rid: str,
        phone: str | None,
        status: str | None,
        summary: str,
    ) -> None:
        batch.activity.append(
            {
                "id": self._next("activity"),
                "kind": kind,
                "created_at": at,
                "request_id": rid,
                "phone": phone,
                "status": status,
                "raw_id": raw_id,
                "summary": summary[:200],
            }
        )

    def _plan(self, t0: datetime) -> list[tuple[str, int, str, datetime]]:
        """The receipts one message gets: (status, code, message, received_at)."""
        rng = self.rng
        plan = []
        roll = rng.random()
        if roll < 0.01:
            return plan  # registered, no receipt yet
        if roll < 0.04:
            code, text_ = rng.choice(FAILURES)
            return [("failed", code, text_, t0 + timedelta(seconds=rng.uniform(0.5, 5)))]
        plan.append(
            ("success", 0, "Successfully sent.", t0 + timedelta(seconds=rng.uniform(0.3, 3)))
        )
        roll = rng.random()
        if roll < 0.05:
            plan.append(
                (
                    "expired",
                    11003,
                    "Viber message has expired",
                    t0 + timedelta(hours=rng.uniform(1, 6)),
                )
            )
        elif roll < 0.12:
            pass  # accepted, not delivered (yet)
        else:
            delivered = t0 + timedelta(seconds=rng.uniform(2, 90))
            plan.append(("delivered", 11001, "Viber message has delivered", delivered))
            if rng.random() < 0.6:
                plan.append(
                    (
                        "seen",
                        11002,
                        "Viber message has seen",
                        delivered + timedelta(seconds=rng.expovariate(1 / 900)),
                    )
                )
            if rng.random() < 0.003:  # a contradiction NXCLOUD sometimes sends; kept and flagged
                plan.append(("failed", 11000, "Viber send error", delivered + timedelta(seconds=5)))
        return plan

    def message(self, i: int, batch: SeedBatch) -> None:
        rng = self.rng
        tags: tuple[str, ...] = ()
        if self.plan is None:
            offset = self.step * i
        else:
            offset, tags = self.plan.at(i)
        t0 = (self.start + offset + timedelta(seconds=rng.uniform(0, 60))).replace(microsecond=0)
        rid = f"{rng.getrandbits(128):032x}"
        phone = rng.choice(self.phones)
        send_time_raw = t0.astimezone(self.zone).strftime(SENDTIME_FORMAT)
        # NXCLOUD's sendTime is the send time of the message, printed in its zone.
        send_time = payloads.parse_send_time(send_time_raw, self.zone)
        plan = self._plan(t0)
        registered = not plan or rng.random() < 0.8
        events: list[datetime] = []
        registration = None

        if registered:
            at = t0 + timedelta(milliseconds=rng.randint(50, 400))
            body = {
                "requestId": rid,
                "phone": phone,
                "text": seeded_text(rng.choice(TEMPLATES), rng.randint(1000, 9999)),
                "appkey": rng.choice(APPKEYS),
                "functionType": rng.choice(FUNCTION_TYPES),
            }
            if tags:
                # Tags come only with a registration, as the sending system gives them.
                body["tags"] = list(tags)
                batch.tags.extend({"request_id": rid, "tag": tag} for tag in tags)
            raw_id = self._raw(batch, "register", at, body, rid, http_status=201)
            self._activity(batch, "register", at, raw_id, rid, phone, None, body["text"])
            registration = Registration(
                phone, body["text"], body["appkey"], body["functionType"], at, tags=frozenset(tags)
            )
            contact = self.contacts.of(phone, at)
            contact.messages += 1
            contact.show(outbound_preview(body["text"]), at)
            events.append(at)

        facts = []
        for status, code, message, at in sorted(plan, key=lambda p: p[3]):
            data = {
                "status": status,
                "requestId": rid,
                "code": code,
                "message": message,
                "sendTime": send_time_raw,
            }
            cost = None
            if status == "success":
                price = round(rng.uniform(0.0085, 0.03), 4)
                cost = ("USD", price, price, rng.choice(("Transactional", "Promotional")))
                data["cost"] = {
                    "currency": cost[0],
                    "localPrice": cost[1],
                    "originalPrice": cost[2],
                    "rateType": cost[3],
                }
            digest = payloads.content_hash("dr", data)
            raw_id = self._raw(batch, "dr", at, data, rid)
            times, last = 1, at
            if status == "delivered" and rng.random() < 0.1:
                # Viber reports delivered once per device: the same body again.
                last = at + timedelta(seconds=rng.uniform(0.5, 20))
                self._raw(batch, "dr", last, data, rid, outcome="duplicate")
                times = 2
            batch.receipts.append(
                {
                    "id": self._next("receipt"),
                    "raw_id": raw_id,
                    "request_id": rid,
                    "content_hash": digest,
                    "status": status,
                    "code": code,
                    "message": message,
                    "send_time_raw": send_time_raw,
                    "send_time": send_time,
                    "cost_currency": cost[0] if cost else None,
                    "cost_local_price": cost[1] if cost else None,
                    "cost_original_price": cost[2] if cost else None,
                    "cost_rate_type": cost[3] if cost else None,
                    "has_cost": cost is not None,
                    "received_at": at,
                    "times_received": times,
                    "last_received_at": last,
                }
            )
            facts.append(
                ReceiptFact(
                    status=status,
                    code=code,
                    message=message,
                    received_at=at,
                    key=digest,
                    send_time_raw=send_time_raw,
                    cost=cost,
                )
            )
            self._activity(
                batch,
                "receipt",
                at,
                raw_id,
                rid,
                phone if registration else None,
                status,
                f"{code} {message}",
            )
            if registration:
                self.contacts.of(phone, at)
            events.append(at)

        state = fold(facts)
        replies = []
        if state.status in ("delivered", "seen") and rng.random() < self.reply_share / 0.85:
            at = max(events) + timedelta(seconds=rng.expovariate(1 / 1800))
            if rng.random() < 0.1:
                content = {
                    "media": f"https://media.example/{rid[:12]}.jpg",
                    "fileName": "photo.jpg",
                }
            else:
                content = {"text": seeded_reply(rng.choice(REPLIES), rid)}
            reply_at_send = at.astimezone(self.zone).strftime(SENDTIME_FORMAT)
            data = {
                "phone": phone,
                "appkey": registration.appkey if registration else rng.choice(APPKEYS),
                "traceRequestId": rid,
                "message": content,
                "sendTime": reply_at_send,
            }
            raw_id = self._raw(batch, "message", at, data, rid)
            preview = reply_preview(
                content.get("text"), content.get("fileName"), content.get("media")
            )
            batch.replies.append(
                {
                    "id": self._next("reply"),
                    "raw_id": raw_id,
                    "content_hash": payloads.content_hash("message", data),
                    "phone": phone,
                    "appkey": data["appkey"],
                    "trace_request_id": rid,
                    "text": content.get("text"),
                    "media": content.get("media"),
                    "file_name": content.get("fileName"),
                    "send_time_raw": reply_at_send,
                    "send_time": payloads.parse_send_time(reply_at_send, self.zone),
                    "received_at": at,
                    "times_received": 1,
                }
            )
            self._activity(batch, "reply", at, raw_id, rid, phone, state.status, preview)
            contact = self.contacts.of(phone, at)
            if registration is None:
                contact.messages += 1
            contact.replied(at)
            contact.show(preview, at)
            replies.append(
                ReplyFact(
                    phone,
                    at,
                    raw_id,
                    content.get("text"),
                    content.get("fileName"),
                    content.get("media"),
                )
            )
            events.append(at)

        batch.messages.append(
            {
                "request_id": rid,
                "created_at": min(events),
                **message_columns(
                    facts, replies, registration, min(events), self.zone, state=state
                ),
            }
        )


def _max_ids() -> dict[str, int]:
    return {
        model.__tablename__: db.session.execute(
            db.select(func.coalesce(func.max(model.id), 0))
        ).scalar()
        for model in (RawBody, Receipt, Reply, Activity)
    }


def _write(batch: SeedBatch) -> None:
    # Parents before children: receipts, replies and activity point at raw bodies.
    for model, rows in (
        (RawBody, batch.raw),
        (Message, batch.messages),
        (MessageTag, batch.tags),
        (Receipt, batch.receipts),
        (Reply, batch.replies),
        (Activity, batch.activity),
    ):
        bulk_insert(db.session.connection(), model, rows)


def _reset_sequences() -> None:
    """Explicit ids leave PostgreSQL's sequences behind; move them past the seeded rows."""
    if db.session.get_bind().dialect.name != "postgresql":
        return
    for table in ("raw_body", "receipt", "reply", "activity"):
        db.session.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
            )
        )
    db.session.commit()


def seed(
    count: int,
    *,
    replies: int | None = None,
    days: float = 120.0,
    batch_size: int = 2000,
    random_seed: int | None = None,
    zone: tzinfo,
    progress: Callable[[int], None] = lambda n: None,
    now: datetime | None = None,
    tags: int = 0,
) -> dict[str, int]:
    """Insert `count` messages (and about `replies` replies), with `tags` campaigns (none by
    default: no message has a tag); returns the rows written per table."""
    if not 0 <= tags <= MAX_CAMPAIGNS:
        raise ValueError(f"tags: from 0 to {MAX_CAMPAIGNS} campaigns, got {tags}")
    rng = random.Random(random_seed)
    if db.session.get_bind().dialect.name == "sqlite":
        # Random keys (requestIds, content hashes) land all over the indexes: past SQLite's
        # default 2 MB page cache every insert would read pages back from disk.
        db.session.execute(text("PRAGMA cache_size = -262144"))
    seeder = Seeder(
        count=count,
        replies=count // 5 if replies is None else replies,
        days=days,
        zone=zone,
        rng=rng,
        now=now or utcnow(),
        ids=_max_ids(),
        campaigns=tags,
    )
    written = {"message": 0, "raw_body": 0, "receipt": 0, "reply": 0, "activity": 0}
    if tags:
        written["message_tag"] = 0
    for start in range(0, count, batch_size):
        batch = SeedBatch()
        for i in range(start, min(count, start + batch_size)):
            seeder.message(i, batch)
        _write(batch)
        db.session.commit()
        for name, rows in (
            ("message", batch.messages),
            ("raw_body", batch.raw),
            ("receipt", batch.receipts),
            ("reply", batch.replies),
            ("activity", batch.activity),
            ("message_tag", batch.tags),
        ):
            if name in written:
                written[name] += len(rows)
        progress(len(batch.messages))
    contacts.write(db.session.connection(), seeder.contacts)
    db.session.commit()
    written["contact"] = len(seeder.contacts)
    _reset_sequences()
    return written
