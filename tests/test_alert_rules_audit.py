"""A change of the alert rules (ALERT_RULES) goes to the audit log once, by "config", as the
servers that run the new rules start."""

from __future__ import annotations

import threading

from app import create_app
from app.alerts.notices import evaluate_once, record_rules_in_effect
from app.alerts.rules import parse_rules
from app.records.models import AuditRecord, db

FAILED = [{"name": "failed-rate", "kind": "failed_rate", "threshold": 5, "window_minutes": 15}]
STRICTER = [{"name": "failed-rate", "kind": "failed_rate", "threshold": 2, "window_minutes": 15}]


def records(app) -> list[AuditRecord]:
    with app.app_context():
        rows = db.session.execute(
            db.select(AuditRecord).where(AuditRecord.action == "alert_rules_change")
        ).scalars()
        return list(rows)


def test_the_rules_in_effect_are_recorded_once_and_again_only_when_they_change(app):
    with app.app_context():
        assert record_rules_in_effect(parse_rules(FAILED)) is True
        assert record_rules_in_effect(parse_rules(FAILED)) is False
        assert record_rules_in_effect(parse_rules(STRICTER)) is True
    first, second = records(app)
    assert first.username == second.username == "config"
    assert first.target == "ALERT_RULES"
    assert "5" in first.details and "before" in second.details
    assert "at least 2" in second.details or "2" in second.details


def test_processes_that_start_together_record_a_change_once(app_config, app):
    """Several servers start at once with new rules: one record, not one per process."""
    apps = [create_app({**app_config, "ALERT_RULES": STRICTER}) for _ in range(4)]
    start = threading.Barrier(len(apps))

    def first_evaluation(each):
        start.wait()
        evaluate_once(each)

    threads = [threading.Thread(target=first_evaluation, args=(a,)) for a in apps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(records(app)) == 1
    # And a process that starts later with the same rules adds nothing.
    evaluate_once(create_app({**app_config, "ALERT_RULES": STRICTER}))
    assert len(records(app)) == 1
