"""Alerts: evaluate the rules, keep one state per rule, notify the alert URL with retries.

A rule fires once per episode: the switch from ok to firing (and back) is a compare-and-set
on its `alert_state` row, so when several processes evaluate at the same moment exactly one
of them records the change and queues the notice. Notices are delivered from the database
with their own schedule (exponential backoff), and every attempt is kept for /alerts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import click
import httpx
from flask import Blueprint, Flask, current_app, render_template
from flask.cli import AppGroup
from sqlalchemy import func
from sqlalchemy.exc import SQLAlchemyError

from ..auth import audit
from ..core.periodic import Periodic, start_with_requests
from ..core.services import services
from ..core.times import iso
from ..records.models import AlertAttempt, AlertNotice, AlertState, AuditRecord, db
from ..records.sqlutil import begin_writing, insert_ignore
from ..urls import external_url
from .rules import Measure, Rule, measure_all, parse_rules

log = logging.getLogger(__name__)
bp = Blueprint("alerts", __name__)

# A claimed notice is not retried by another process before this, even if its sender died.
CLAIM_LEASE = timedelta(minutes=2)
RECENT_NOTICES = 50

Poster = Callable[[str, bytes, dict, float], int]


def utcnow() -> datetime:
    return datetime.now(UTC)


def rules() -> list[Rule]:
    return services(current_app).alert_rules


def clock() -> datetime:
    custom = current_app.config.get("ALERT_CLOCK")
    return custom() if custom else utcnow()


def _payload(
    rule: Rule, result: Measure, kind: str, episode: int, at: datetime, since: datetime | None
) -> str:
    return json.dumps(
        {
            "source": "viberwatch",
            "rule": rule.name,
            "state": kind,
            "episode": episode,
            "kind": rule.kind,
            "description": rule.describe(),
            "value": result.value,
            "threshold": rule.threshold,
            "windowMinutes": rule.window_minutes,
            "summary": result.summary,
            "at": iso(at),
            "firingSince": iso(since),
            # The alerts page, under PUBLIC_URL (none without it: no request to take a host from).
            "url": external_url("alerts.index"),
        }
    )


def _transition(rule: Rule, result: Measure, now: datetime) -> AlertNotice | None:
    """Flip the rule's state if this process wins the compare-and-set; queue the notice."""
    state = db.session.get(AlertState, rule.name, populate_existing=True)
    episode = state.episode + 1 if result.firing else state.episode
    values = {
        "firing": result.firing,
        "since": now,
        "value": result.value,
        "summary": result.summary,
        "checked_at": now,
        "episode": episode,
    }
    won = (
        db.session.execute(
            db.update(AlertState)
            .where(
                AlertState.rule == rule.name,
                AlertState.firing == state.firing,
                AlertState.episode == state.episode,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
    if not won:
        return None
    kind = "firing" if result.firing else "resolved"
    since = now if result.firing else state.since
    notice = AlertNotice(
        rule=rule.name,
        episode=episode,
        kind=kind,
        created_at=now,
        payload=_payload(rule, result, kind, episode, now, since),
        attempts=0,
        next_attempt_at=now if current_app.config.get("ALERT_URL") else None,
    )
    db.session.add(notice)
    return notice


def evaluate(now: datetime | None = None) -> list[AlertNotice]:
    """Measure every rule at `now`; returns the notices queued by state changes."""
    now = now or clock()
    notices = []
    for rule, result in measure_all(rules(), now):
        insert_ignore(AlertState, {"rule": rule.name, "firing": False, "episode": 0}, ["rule"])
        state = db.session.get(AlertState, rule.name, populate_existing=True)
        if state.firing != result.firing:
            notice = _transition(rule, result, now)
            if notice is not None:
                notices.append(notice)
        else:
            state.value, state.summary, state.checked_at = result.value, result.summary, now
        db.session.commit()
    return notices


def _post(url: str, body: bytes, headers: dict, timeout: float) -> int:
    response = httpx.post(url, content=body, headers=headers, timeout=timeout)
    return response.status_code


def _claim(notice_id: int, due: datetime, now: datetime) -> bool:
    claimed = (
        db.session.execute(
            db.update(AlertNotice)
            .where(AlertNotice.id == notice_id, AlertNotice.next_attempt_at == due)
            .values(next_attempt_at=now + CLAIM_LEASE)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
    db.session.commit()
    return claimed


def deliver_due(now: datetime | None = None, post: Poster | None = None) -> list[AlertAttempt]:
    """POST every notice whose attempt is due; a rule's notices go out in order."""
    now = now or clock()
    cfg = current_app.config
    url = cfg.get("ALERT_URL")
    post = post or _post
    pending = db.session.execute(
        db.select(AlertNotice.id, AlertNotice.rule, AlertNotice.next_attempt_at)
        .where(AlertNotice.next_attempt_at.isnot(None))
        .order_by(AlertNotice.id)
    ).all()
    attempts, blocked = [], set()
    for notice_id, rule, due in pending:
        if rule in blocked:
            continue
        blocked.add(rule)  # later notices of this rule wait for this one
        if not url or due > now or not _claim(notice_id, due, now):
            continue
        notice = db.session.get(AlertNotice, notice_id)
        number = notice.attempts + 1
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "viberwatch-alerts",
            "Idempotency-Key": f"viberwatch-alert-{notice.id}",
        }
        status, error = None, None
        try:
            status = post(url, notice.payload.encode(), headers, cfg["ALERT_TIMEOUT"])
        except Exception as exc:  # any failure to reach the receiver is one failed attempt
            error = f"{type(exc).__name__}: {exc}"[:500]
        ok = status is not None and 200 <= status < 300
        if status is not None and not ok:
            error = f"HTTP {status}"
        attempt = AlertAttempt(
            notice_id=notice.id,
            number=number,
            at=now,
            url=url,
            http_status=status,
            error=error,
            ok=ok,
        )
        db.session.add(attempt)
        notice.attempts = number
        if ok:
            notice.delivered_at, notice.next_attempt_at = now, None
        elif number >= cfg["ALERT_MAX_ATTEMPTS"]:
            notice.gave_up_at, notice.next_attempt_at = now, None
        else:
            backoff = cfg["ALERT_RETRY_BACKOFF"] * 2 ** (number - 1)
            notice.next_attempt_at = now + timedelta(seconds=backoff)
        db.session.commit()
        log.info(
            "alert %s %s episode %s attempt %s: %s",
            notice.rule,
            notice.kind,
            notice.episode,
            number,
            "delivered" if ok else error,
        )
        attempts.append(attempt)
    return attempts


def check(now: datetime | None = None, post: Poster | None = None) -> dict:
    """One evaluator pass: evaluate the rules, then deliver what is due."""
    now = now or clock()
    notices = evaluate(now)
    attempts = deliver_due(now, post)
    return {"notices": notices, "attempts": attempts}


def firing() -> list[AlertState]:
    return list(
        db.session.execute(
            db.select(AlertState).where(AlertState.firing.is_(True)).order_by(AlertState.rule)
        ).scalars()
    )


# Any constant: the advisory lock that makes PostgreSQL record a change of the rules once.
RULES_LOCK = 0x76696265727761


def rules_digest(rules: list[Rule]) -> str:
    text = json.dumps([dataclasses.asdict(r) for r in rules], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_rules_in_effect(rules: list[Rule]) -> bool:
    """An audit record when the rules in effect differ from the last ones recorded (ALERT_RULES
    changed, seen as a server starts), by "config": one record per change, whichever of the
    processes that start at once sees it first. Returns whether one was written."""
    digest = rules_digest(rules)
    if db.engine.dialect.name == "postgresql":
        db.session.execute(db.select(func.pg_advisory_xact_lock(RULES_LOCK)))
    else:
        begin_writing(db.session.connection())
    last = db.session.execute(
        db.select(AuditRecord)
        .where(AuditRecord.action == "alert_rules_change")
        .order_by(AuditRecord.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    before = audit.details_of(last) if last is not None else {}
    if before.get("digest") == digest:
        db.session.rollback()
        return False
    audit.record(
        "alert_rules_change",
        "ALERT_RULES",
        {
            "digest": digest,
            "rules": [r.describe() for r in rules],
            "before": before.get("rules"),
        },
        username="config",
    )
    return True


def evaluate_once(app: Flask) -> None:
    """One evaluation by the background thread; a failure waits for the next interval. The
    first one of a process records the rules in effect if they changed."""
    with app.app_context():
        try:
            registry = services(app)
            if not registry.alert_rules_recorded:
                record_rules_in_effect(registry.alert_rules)
                registry.alert_rules_recorded = True
            check()
        except SQLAlchemyError:
            db.session.rollback()
            log.warning("alert evaluation failed; retrying next interval", exc_info=True)
        except Exception:
            log.exception("alert evaluation failed")


@bp.get("/alerts")
def index():
    """Alert rules with their state, and the latest notices with each delivery attempt."""
    states = {s.rule: s for s in db.session.execute(db.select(AlertState)).scalars()}
    notices = list(
        db.session.execute(
            db.select(AlertNotice).order_by(AlertNotice.id.desc()).limit(RECENT_NOTICES)
        ).scalars()
    )
    attempts: dict[int, list[AlertAttempt]] = {}
    if notices:
        for attempt in db.session.execute(
            db.select(AlertAttempt)
            .where(AlertAttempt.notice_id.in_([n.id for n in notices]))
            .order_by(AlertAttempt.notice_id, AlertAttempt.number)
        ).scalars():
            attempts.setdefault(attempt.notice_id, []).append(attempt)
    return render_template(
        "alerts/index.html",
        rules=rules(),
        states=states,
        notices=notices,
        attempts=attempts,
        alert_url=bool(current_app.config.get("ALERT_URL")),
    )


def firing_for_banner() -> list[AlertState]:
    # The banner must never take a page down: a missing table or a busy database hides it.
    try:
        return firing()
    except SQLAlchemyError:
        db.session.rollback()
        return []


def _banner_context() -> dict:
    # A function, not a list: only pages that show the banner query (not every partial).
    return {"firing_alerts": firing_for_banner}


def _cli(app: Flask) -> click.Group:
    @click.group("alerts", cls=AppGroup)
    def group():
        """Alert rules: evaluate them and deliver notices."""

    @group.command("check")
    def check_command():
        """Evaluate every rule once and deliver the notices that are due."""
        result = check()
        for state in db.session.execute(db.select(AlertState).order_by(AlertState.rule)).scalars():
            click.echo(
                f"{state.rule:20} {'FIRING' if state.firing else 'ok':7} {state.summary or ''}"
            )
        for notice in result["notices"]:
            click.echo(f"queued: {notice.rule} {notice.kind} (episode {notice.episode})")
        for attempt in result["attempts"]:
            click.echo(
                f"sent: notice {attempt.notice_id} attempt {attempt.number}: "
                f"{'ok' if attempt.ok else attempt.error}"
            )

    return group


def register(app: Flask) -> None:
    services(app).alert_rules = parse_rules(app.config["ALERT_RULES"])
    app.register_blueprint(bp)
    app.context_processor(_banner_context)
    app.cli.add_command(_cli(app))
    # The background evaluator of this process; started by the first request it serves.
    runner = Periodic("alerts", lambda: app.config["ALERT_INTERVAL"], lambda: evaluate_once(app))
    services(app).alert_runner = runner
    if (app.config["ALERT_INTERVAL"] or 0) > 0 and services(app).alert_rules and not app.testing:
        start_with_requests(app, runner)
