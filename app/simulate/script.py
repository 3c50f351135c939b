"""Play NXCLOUD against a running viberwatch: a seeded script of messages, receipts and replies.

`build_script` is pure: the same arguments give the same bodies in the same order, so a
test can compute every message's intended final columns as ingest derives them. `simulate_run`
plays a script over real HTTP.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo

from ..core.payloads import parse_receipt, parse_registration, parse_reply, parse_zone
from ..core.status import describe_code
from ..records.derivation import Registration, message_columns, receipt_fact, reply_fact

# Share of messages per final outcome, and of failures per code (all from NXCLOUD's table).
OUTCOMES = (("seen", 55), ("delivered", 20), ("failed", 12), ("expired", 8), ("success", 5))
FAILURE_CODES = ((11000, 50), (1102, 15), (9002, 15), (9001, 5), (1100, 5), (9004, 5), (9999, 5))
STATUS_CODES = {"success": 0, "delivered": 11001, "seen": 11002, "expired": 11003}
DOUBLE_DELIVERED = 0.15
SEEN_BEFORE_DELIVERED = 0.10
RETRIED_PUSH = 0.08
LATE_REGISTRATION = 0.10
REPLY_CHANCE = 0.25
MEDIA_REPLY_SHARE = 0.3

TEXTS = (
    "Your verification code is {n}.",
    "Order #{n} has shipped and is on its way.",
    "Reminder: your appointment is tomorrow at {h}:00.",
    "Your parcel {n} is waiting at the pick-up point.",
    "Payment of {n} received, thank you.",
    "Your table for {h} is booked for tonight.",
)
REPLY_TEXTS = (
    "Thanks!",
    "Can I change the time?",
    "Where is my order?",
    "ok",
    "Please call me back.",
    "Стоп",
    "👍",
    "What is the address?",
    "I did not order this.",
    "Got it, see you then.",
)
MEDIA_TYPES = (("jpg", "photo"), ("png", "screenshot"), ("pdf", "invoice"), ("mp4", "video"))
# Campaign tags of messages sent through the send proxy (X-Viberwatch-Tags); some have none.
CAMPAIGNS = ("spring-sale", "order-updates")
UNTAGGED_SHARE = 0.2
# Seeded runs use a fixed clock for sendTime, so the same seed gives the same bodies.
SEEDED_START = datetime(2024, 6, 3, 9, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Event:
    """One HTTP request of the script: where it goes, when, and its exact body."""

    at: float  # seconds after the start of the run
    kind: str  # register | send | dr | message
    request_id: str
    body: bytes
    note: str = ""  # why it is irregular: duplicate, retry, early-seen, late-register
    tags: tuple[str, ...] = ()  # a send's tags (the X-Viberwatch-Tags header)

    @property
    def data(self) -> dict:
        return json.loads(self.body)

    def following(self, request_id: str) -> Event:
        """This receipt or reply for the message NXCLOUD's send API named `request_id` (a
        script's ids are its own until a send is answered)."""
        if request_id == self.request_id:
            return self
        data = self.data
        key = "traceRequestId" if self.kind == "message" else "requestId"
        if data.get(key) == self.request_id:
            data[key] = request_id
        return replace(self, request_id=request_id, body=_dumps(data))


@dataclass(frozen=True)
class ScriptedMessage:
    request_id: str
    phone: str
    text: str
    outcome: str
    registered: bool
    events: tuple[Event, ...]  # in the order they are pushed
    tags: tuple[str, ...] = ()  # sent through the send proxy with these tags

    @property
    def receipt_bodies(self) -> list[dict]:
        return [e.data for e in self.events if e.kind == "dr"]

    @property
    def replied(self) -> bool:
        return any(e.kind == "message" for e in self.events)

    def intended_columns(self, zero: datetime | None = None, zone: str = "UTC+08:00") -> dict:
        """The message's columns as ingest derives them (`derivation.message_columns`) from the
        bodies pushed as scripted, each received `at` seconds after `zero`."""
        zero, tz = zero or SEEDED_START, parse_zone(zone)
        receipts, replies, registration = {}, {}, None
        for order, e in enumerate(self.events):
            at = zero + timedelta(seconds=e.at)
            if e.kind == "dr":
                rc = parse_receipt(e.data, tz)
                receipts.setdefault(rc.content_hash, receipt_fact(rc, at))
            elif e.kind == "message":
                rp = parse_reply(e.data, tz)
                replies.setdefault(rp.content_hash, reply_fact(rp, at, order))
            elif e.kind == "send":  # registered by the send proxy from the send's body
                sent = e.data
                registration = registration or Registration(
                    sent["phone"], sent["messageData"]["text"], sent["appkey"], "text", at
                )
            else:
                rg = parse_registration(e.data)
                registration = Registration(
                    rg.phone,
                    rg.text,
                    rg.appkey,
                    rg.function_type,
                    registration.registered_at if registration else at,
                )
        first = zero + timedelta(seconds=min(e.at for e in self.events))
        return message_columns(receipts.values(), replies.values(), registration, first, tz)


@dataclass(frozen=True)
class Script:
    seed: int
    messages: tuple[ScriptedMessage, ...]
    events: tuple[Event, ...]  # every request, in the order the run starts them

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e.kind == kind)

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.messages:
            counts[m.outcome] = counts.get(m.outcome, 0) + 1
        return counts


def _dumps(data: dict) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _pick(rng: random.Random, weighted) -> object:
    values, weights = zip(*weighted, strict=False)
    return rng.choices(values, weights=weights, k=1)[0]


def _send_time(start: datetime, offset: float, zone: tzinfo) -> str:
    return (start + timedelta(seconds=offset)).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


class _Builder:
    """The state of one script generation; every random choice comes from one seeded Random."""

    def __init__(
        self,
        seed: int,
        count: int,
        rate: float,
        start: datetime,
        zone: tzinfo,
        speed: float,
        appkey: str,
    ):
        self.rng = random.Random(seed)
        self.count = count
        self.rate = rate
        self.start = start
        self.zone = zone
        self.speed = speed
        self.appkey = appkey
        pool = max(1, count // 3)
        self.phones = [f"79{self.rng.randrange(10**8, 10**9)}" for _ in range(pool)]

    def delay(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high) / self.speed

    def receipt(
        self,
        request_id: str,
        status: str,
        send_time: str,
        code: int | None = None,
        cost: dict | None = None,
    ) -> dict:
        code = STATUS_CODES[status] if code is None else code
        body = {
            "status": status,
            "requestId": request_id,
            "code": code,
            "message": describe_code(code).message,
            "sendTime": send_time,
        }
        if cost is not None:
            body["cost"] = cost
        return body

    def message(self, index: int, register: bool, send: bool = False) -> ScriptedMessage:
        rng = self.rng
        request_id = f"{rng.getrandbits(128):032x}"
        phone = rng.choice(self.phones)
        text = rng.choice(TEXTS).format(n=rng.randrange(1000, 99999), h=rng.randrange(8, 20))
        outcome = _pick(rng, OUTCOMES)
        t0 = index / self.rate
        send_time = _send_time(self.start, t0, self.zone)
        price = round(rng.uniform(0.002, 0.05), 5)
        # One cost object on every receipt that carries one, so the fold's pick cannot differ.
        cost = {
            "currency": "USD",
            "localPrice": round(price * 7.25, 5),
            "originalPrice": price,
            "rateType": "Transactional",
        }
        timeline: list[tuple[float, str, dict, str]] = []  # (at, kind, body, note)
        t = t0 + self.delay(0.2, 1.0)
        if outcome == "failed":
            code = _pick(rng, FAILURE_CODES)
            if code == 11000:
                timeline.append(
                    (t, "dr", self.receipt(request_id, "success", send_time, cost=cost), "")
                )
                t += self.delay(0.5, 3.0)
            timeline.append((t, "dr", self.receipt(request_id, "failed", send_time, code=code), ""))
        else:
            timeline.append(
                (t, "dr", self.receipt(request_id, "success", send_time, cost=cost), "")
            )
        if outcome in ("delivered", "seen"):
            t += self.delay(1.0, 6.0)
            delivered = self.receipt(request_id, "delivered", send_time, cost=cost)
            timeline.append((t, "dr", delivered, ""))
            if rng.random() < DOUBLE_DELIVERED:
                # Viber reports delivery once per device of the recipient.
                timeline.append((t + self.delay(0.5, 4.0), "dr", delivered, "duplicate"))
            if outcome == "seen":
                seen_at = t + self.delay(2.0, 20.0)
                if rng.random() < SEEN_BEFORE_DELIVERED:
                    seen_at = t - self.delay(0.1, 0.8)
                    note = "early-seen"
                else:
                    note = ""
                timeline.append((seen_at, "dr", self.receipt(request_id, "seen", send_time), note))
            if rng.random() < REPLY_CHANCE:
                reply_at = max(at for at, *_ in timeline) + self.delay(3.0, 30.0)
                # sendTime is written on the unhurried clock, so `speed` never changes a body.
                story_at = t0 + (reply_at - t0) * self.speed
                timeline.append((reply_at, "message", self.reply(request_id, phone, story_at), ""))
        elif outcome == "expired":
            t += self.delay(8.0, 30.0)
            timeline.append((t, "dr", self.receipt(request_id, "expired", send_time), ""))
        receipts = [item for item in timeline if item[1] == "dr"]
        if rng.random() < RETRIED_PUSH:
            _, kind, body, _ = rng.choice(receipts)
            last = max(at for at, *_ in timeline)
            timeline.append((last + self.delay(0.5, 5.0), kind, body, "retry"))
        tags: tuple[str, ...] = ()
        if send:
            # Sent through viberwatch's send proxy first: the receipts follow its answer.
            if rng.random() >= UNTAGGED_SHARE:
                tags = (rng.choice(CAMPAIGNS),)
            body = {
                "appkey": self.appkey,
                "phone": phone,
                "functionType": "text",
                "messageData": {"rateType": "Transactional", "text": text},
            }
            timeline.append((t0, "send", body, ""))
        elif register:
            body = {
                "requestId": request_id,
                "phone": phone,
                "text": text,
                "appkey": self.appkey,
                "functionType": "text",
            }
            if rng.random() < LATE_REGISTRATION:
                timeline.append(
                    (receipts[0][0] + self.delay(0.1, 1.0), "register", body, "late-register")
                )
            else:
                timeline.append((t0, "register", body, ""))
        # A stable sort keeps the scripted order of events planned for the same instant.
        timeline.sort(key=lambda item: item[0])
        events = tuple(
            Event(
                at=round(at, 6),
                kind=kind,
                request_id=request_id,
                body=_dumps(body),
                note=note,
                tags=tags if kind == "send" else (),
            )
            for at, kind, body, note in timeline
        )
        return ScriptedMessage(request_id, phone, text, outcome, register or send, events, tags)

    def reply(self, request_id: str, phone: str, at: float) -> dict:
        rng = self.rng
        if rng.random() < MEDIA_REPLY_SHARE:
            ext, stem = rng.choice(MEDIA_TYPES)
            name = f"{stem}-{rng.randrange(100, 999)}.{ext}"
            message = {
                "media": f"https://media.example.com/viber/{rng.getrandbits(64):016x}/{name}",
                "fileName": name,
            }
        else:
            message = {"text": rng.choice(REPLY_TEXTS)}
        return {
            "phone": phone,
            "appkey": self.appkey,
            "traceRequestId": request_id,
            "message": message,
            "sendTime": _send_time(self.start, at, self.zone),
        }


def build_script(
    seed: int,
    messages: int,
    *,
    rate: float = 5.0,
    register: bool = True,
    start: datetime | None = None,
    zone: str = "UTC+08:00",
    speed: float = 1.0,
    appkey: str = "SIMAPP01",
    send: bool = False,
) -> Script:
    """A deterministic script of `messages` messages started `rate` per second.

    `speed` divides every delay between a message's events (a test runs the same story
    faster); `start` is the clock the `sendTime` fields are written from. With `send`, each
    message starts with its send through viberwatch's send proxy (kind "send", some with a
    campaign tag) instead of a registration, and its receipts and replies follow the
    requestId the send is answered with.
    """
    if messages < 0:
        raise ValueError("messages must not be negative")
    if rate <= 0 or speed <= 0:
        raise ValueError("rate and speed must be positive")
    builder = _Builder(seed, messages, rate, start or SEEDED_START, parse_zone(zone), speed, appkey)
    scripted = tuple(builder.message(i, register, send) for i in range(messages))
    ordered = sorted(
        ((e.at, i, j, e) for i, m in enumerate(scripted) for j, e in enumerate(m.events)),
        key=lambda item: item[:3],
    )
    return Script(seed, scripted, tuple(e for *_, e in ordered))


def sent_message_events(
    rng: random.Random,
    request_id: str,
    phone: str,
    *,
    appkey: str = "SIMAPP01",
    zone: str = "UTC+08:00",
    now: datetime | None = None,
    speed: float = 1.0,
) -> tuple[Event, ...]:
    """The receipts (and perhaps a reply) of a message someone sent through the played send API."""
    builder = _Builder(0, 0, 1.0, now or datetime.now(UTC), parse_zone(zone), speed, appkey)
    builder.rng = rng
    send_time = _send_time(builder.start, 0, builder.zone)
    price = round(rng.uniform(0.002, 0.05), 5)
    cost = {
        "currency": "USD",
        "localPrice": round(price * 7.25, 5),
        "originalPrice": price,
        "rateType": "Session",
    }
    t = builder.delay(0.5, 1.5)
    timeline = [(t, "dr", builder.receipt(request_id, "success", send_time, cost=cost))]
    if rng.random() < 0.1:
        timeline.append(
            (
                t + builder.delay(0.5, 2.0),
                "dr",
                builder.receipt(request_id, "failed", send_time, code=11000),
            )
        )
    else:
        t += builder.delay(1.0, 4.0)
        timeline.append((t, "dr", builder.receipt(request_id, "delivered", send_time, cost=cost)))
        if rng.random() < 0.75:
            t += builder.delay(2.0, 10.0)
            timeline.append((t, "dr", builder.receipt(request_id, "seen", send_time)))
            if rng.random() < 0.3:
                t += builder.delay(3.0, 10.0)
                timeline.append((t, "message", builder.reply(request_id, phone, t * speed)))
    return tuple(
        Event(at=round(at, 6), kind=kind, request_id=request_id, body=_dumps(body))
        for at, kind, body in timeline
    )
