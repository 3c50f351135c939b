"""Alert rules: what each kind measures over its window, and when it fires.

No Flask request here; a rule is a plain dict from the configuration (`ALERT_RULES`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func

from ..records.models import Activity, Message, db

KINDS = ("failed_rate", "expired_count", "no_receipts")

DEFAULT_RULES = [
    {
        "name": "failed-rate",
        "kind": "failed_rate",
        "threshold": 5,
        "window_minutes": 15,
        "min_messages": 20,
    },
    {"name": "expired", "kind": "expired_count", "threshold": 10, "window_minutes": 60},
    {"name": "no-receipts", "kind": "no_receipts", "window_minutes": 30, "grace_minutes": 5},
]


class RuleError(ValueError):
    """A rule in the configuration that cannot be used; names the rule and the field."""


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    threshold: float
    window_minutes: int
    min_messages: int = 1
    # no_receipts: a message registered this recently may still be waiting for its first receipt.
    grace_minutes: int = 5

    @property
    def window(self) -> timedelta:
        return timedelta(minutes=self.window_minutes)

    def describe(self) -> str:
        if self.kind == "failed_rate":
            return (
                f"failed rate above {self.threshold:g}% over {self.window_minutes} min "
                f"(at least {self.min_messages} messages with a receipt)"
            )
        if self.kind == "expired_count":
            return f"more than {self.threshold:g} expired messages in {self.window_minutes} min"
        return (
            f"no receipts for {self.window_minutes} min while at least {self.min_messages} "
            f"message(s) were registered in it, {self.grace_minutes} min or more ago"
        )

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "threshold": self.threshold,
            "windowMinutes": self.window_minutes,
            "minMessages": self.min_messages,
            "graceMinutes": self.grace_minutes,
        }


@dataclass(frozen=True)
class Measure:
    value: float
    firing: bool
    summary: str


def _number(raw: dict, name: str, field: str, default: Any, minimum: float) -> float:
    value = raw.get(field, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuleError(f"ALERT_RULES[{name}].{field}: must be a number, got {value!r}")
    if value < minimum:
        raise RuleError(f"ALERT_RULES[{name}].{field}: must be at least {minimum}, got {value!r}")
    return value


def parse_rules(raw: Any) -> list[Rule]:
    """Rules from the configuration: a list of dicts, or the same as a JSON string."""
    if raw is None:
        raw = DEFAULT_RULES
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else []
        except ValueError as exc:
            raise RuleError(f"ALERT_RULES: not JSON ({exc})") from None
    if not isinstance(raw, (list, tuple)):
        raise RuleError("ALERT_RULES: must be a list of rules")
    rules, names = [], set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise RuleError(f"ALERT_RULES[{i}]: must be an object")
        name = item.get("name") or f"rule-{i + 1}"
        if not isinstance(name, str) or len(name) > 64:
            raise RuleError(f"ALERT_RULES[{i}].name: must be a string of at most 64 characters")
        if name in names:
            raise RuleError(f"ALERT_RULES[{name}].name: used twice")
        names.add(name)
        kind = item.get("kind")
        if kind not in KINDS:
            raise RuleError(
                f"ALERT_RULES[{name}].kind: must be one of {', '.join(KINDS)}, got {kind!r}"
            )
        default_window = {"failed_rate": 15, "expired_count": 60, "no_receipts": 30}[kind]
        window = _number(item, name, "window_minutes", default_window, 1)
        threshold = _number(item, name, "threshold", 0, 0)
        min_messages = _number(item, name, "min_messages", 1, 1)
        grace = _number(item, name, "grace_minutes", min(5, int(window)), 0)
        if grace > window:
            raise RuleError(f"ALERT_RULES[{name}].grace_minutes: must not exceed window_minutes")
        rules.append(Rule(name, kind, float(threshold), int(window), int(min_messages), int(grace)))
    return rules


def _activity_count(
    kind: str,
    since: datetime,
    until: datetime,
    status: str | None = None,
    distinct_messages: bool = False,
) -> int:
    column = func.count(func.distinct(Activity.request_id)) if distinct_messages else func.count()
    stmt = db.select(column).where(
        Activity.kind == kind, Activity.created_at > since, Activity.created_at <= until
    )
    if status is not None:
        stmt = stmt.where(Activity.status == status)
    return int(db.session.execute(stmt).scalar_one())


def measure(rule: Rule, now: datetime) -> Measure:
    """The rule's value at `now` over the window that ends then, and whether it fires."""
    since = now - rule.window
    if rule.kind == "failed_rate":
        # The messages first heard of in the window that have a receipt, and how many failed.
        m = Message
        with_receipt, failed = db.session.execute(
            db.select(
                func.count(), func.coalesce(func.sum(case((m.status == "failed", 1), else_=0)), 0)
            ).where(m.created_at > since, m.created_at <= now, m.status.isnot(None))
        ).one()
        rate = 100.0 * failed / with_receipt if with_receipt else 0.0
        firing = with_receipt >= rule.min_messages and rate > rule.threshold
        return Measure(
            round(rate, 2),
            firing,
            f"{failed} of {with_receipt} messages failed ({rate:.1f}%) in {rule.window_minutes} min",
        )
    if rule.kind == "expired_count":
        expired = _activity_count("receipt", since, now, status="expired", distinct_messages=True)
        return Measure(
            float(expired),
            expired > rule.threshold,
            f"{expired} messages expired in {rule.window_minutes} min",
        )
    receipts = _activity_count("receipt", since, now)
    registered = _activity_count(
        "register", since, now - timedelta(minutes=rule.grace_minutes), distinct_messages=True
    )
    return Measure(
        float(receipts),
        receipts == 0 and registered >= rule.min_messages,
        f"{receipts} receipts in {rule.window_minutes} min, {registered} messages registered",
    )


def measure_all(rules: Iterable[Rule], now: datetime) -> list[tuple[Rule, Measure]]:
    return [(rule, measure(rule, now)) for rule in rules]
