"""What seeded data looks like: texts, replies, failure codes, and when each message is sent
with which campaign tags (`CampaignPlan`). `seed.py` writes rows of it."""

from __future__ import annotations

import json
import random
from array import array
from datetime import timedelta

HEADERS = json.dumps({"content-type": "application/json"})
APPKEYS = ("TexxxP6", "Shop01x", "Bank7Qz")
FUNCTION_TYPES = ("text", "text", "text", "text_image", "text_button")
TEMPLATES = (
    "Your code is {n}",
    "Order #{n} has shipped",
    "Your appointment is confirmed for {n}:00",
    "Payment of ${n}.00 received, thank you",
    "Hi! Your parcel {n} is out for delivery",
)
# What makes seeded texts worth searching, chosen from numbers already drawn (a message's
# number, a reply's requestId) so the random stream, and every other figure, stays as it was:
# per 100, the ending of a message's text and what a reply adds (words common, middling, rare).
TEXT_ENDINGS = (
    ((0, 15), " Questions about a refund? Reply to this message."),
    ((15, 16), " Use voucher SAVE10 on your next order."),
    ((16, 40), " Track it in the app."),
    ((40, 50), " Reply STOP to opt out."),
)
REPLY_ADDITIONS = (
    ((0, 10), " I want a refund"),
    ((10, 11), " my voucher does not work"),
    ((11, 20), " where is my order?"),
)


def _by_hundred(table, n: int) -> str:
    return next((words for (low, high), words in table if low <= n % 100 < high), "")


def seeded_text(template: str, n: int) -> str:
    """A registered text: the template with its number, and an ending by that number."""
    return template.format(n=n) + _by_hundred(TEXT_ENDINGS, n)


def seeded_reply(text: str, rid: str) -> str:
    """A reply's text: one of REPLIES, and some words more for a share of requestIds."""
    return text + _by_hundred(REPLY_ADDITIONS, int(rid[-6:], 16))


REPLIES = (
    "Thanks!",
    "ok",
    "Who is this?",
    "STOP",
    "When will it arrive?",
    "Received, thank you",
    "Can I change the time?",
    "👍",
    "Please call me",
    "Wrong number",
)
FAILURES = (
    (9002, "Phone number error"),
    (1102, "Insufficient balance"),
    (11000, "Viber send error"),
    (9001, "System business error"),
)
SENDTIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# Campaign tags: "<theme>-<number>", each campaign sent over one of these many hours.
CAMPAIGN_THEMES = (
    "spring-sale",
    "newsletter",
    "black-friday",
    "app-update",
    "loyalty",
    "reminder",
    "flash-sale",
    "welcome",
    "survey",
    "restock",
)
CAMPAIGN_HOURS = (2, 3, 4, 6, 8, 12, 24)
CAMPAIGN_SHARE = 0.8  # of the messages; the rest is the steady flow
OTP_TAG = "otp"  # always on: a share of the steady flow, all through the period
OTP_SHARE = 0.5  # of the steady flow; the rest of it has no tag
SEGMENT_TAGS = ("vip", "new-customers", "win-back")
SEGMENT_SHARE = 0.08  # of the campaign messages: a segment as their second tag
MAX_CAMPAIGNS = 10_000
END_MARGIN = timedelta(hours=8)  # the last message this long before now: room for receipts


def campaign_tag(k: int) -> str:
    """The tag of the k-th campaign (from 0)."""
    return f"{CAMPAIGN_THEMES[k % len(CAMPAIGN_THEMES)]}-{k + 1:03d}"


class CampaignPlan:
    """When each seeded message is sent and which tags it carries, for `campaigns` campaigns.

    A campaign has a window of its own (one of CAMPAIGN_HOURS, somewhere in the period) and a
    size drawn from a heavy-tailed distribution, so a few campaigns are busy and most are
    small; its messages go out in its window, most of them early in it. CAMPAIGN_SHARE of the
    messages belong to campaigns (SEGMENT_SHARE of those also name a segment); the rest are a
    steady flow over the whole period, OTP_SHARE of it tagged `otp`, the rest untagged.
    Messages are handed out in time order, so raw and activity ids still follow the clock.
    """

    STEADY, OTP = 0, 1  # codes below the first campaign's
    SHIFT = 16  # a slot: milliseconds after the start << SHIFT | code

    def __init__(self, campaigns: int, count: int, span: timedelta, rng: random.Random):
        self.rng = rng
        self.tags = [campaign_tag(k) for k in range(campaigns)]
        span_ms = int(span.total_seconds() * 1000)
        weights = [rng.paretovariate(1.2) for _ in range(campaigns)]
        total = sum(weights)
        in_campaigns = round(count * CAMPAIGN_SHARE) if campaigns else 0
        slots = []
        for k, weight in enumerate(weights):
            size = max(1, round(in_campaigns * weight / total))
            window = min(span_ms, rng.choice(CAMPAIGN_HOURS) * 3_600_000)
            start = rng.randrange(span_ms - window + 1)
            code = k + 2
            slots.extend(
                (start + int(window * rng.random() ** 2)) << self.SHIFT | code for _ in range(size)
            )
        del slots[count:]
        while len(slots) < count:
            code = self.OTP if rng.random() < OTP_SHARE else self.STEADY
            slots.append(rng.randrange(span_ms) << self.SHIFT | code)
        slots.sort()
        self.slots = array("q", slots)

    def at(self, i: int) -> tuple[timedelta, tuple[str, ...]]:
        """The i-th message's time after the period's start, and its tags."""
        slot = self.slots[i]
        code = slot & ((1 << self.SHIFT) - 1)
        offset = timedelta(milliseconds=slot >> self.SHIFT)
        if code == self.STEADY:
            return offset, ()
        if code == self.OTP:
            return offset, (OTP_TAG,)
        tag = self.tags[code - 2]
        if self.rng.random() < SEGMENT_SHARE:
            return offset, (tag, self.rng.choice(SEGMENT_TAGS))
        return offset, (tag,)
