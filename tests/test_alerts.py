"""Alert rules fire and clear on a fixed clock; notices reach a real HTTP receiver, with retries."""

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.alerts import notices as alerts
from app.alerts.rules import RuleError, parse_rules
from app.core.services import services
from app.records.models import AlertAttempt, AlertNotice, AlertState, db
from support.timed_ingest import receipt, register

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
RULES = [
    {
        "name": "failed-rate",
        "kind": "failed_rate",
        "threshold": 40,
        "window_minutes": 10,
        "min_messages": 2,
    },
    {"name": "expired", "kind": "expired_count", "threshold": 1, "window_minutes": 60},
    {"name": "silence", "kind": "no_receipts", "window_minutes": 30, "grace_minutes": 5},
]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


class Receiver:
    """A local HTTP endpoint that answers 500 to its first `failures` POSTs, then 200."""

    def __init__(self, failures: int):
        self.failures = failures
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(json.loads(body))
                receiver.headers.append(dict(self.headers))
                status = 500 if len(receiver.bodies) <= receiver.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(failures=2)
    yield r
    r.close()


@pytest.fixture
def app_config(app_config):
    app_config.update({"ALERT_RULES": RULES, "ALERT_RETRY_BACKOFF": 30, "ALERT_MAX_ATTEMPTS": 4})
    return app_config


def state(name):
    return db.session.get(AlertState, name, populate_existing=True)


def notices(rule=None):
    stmt = db.select(AlertNotice).order_by(AlertNotice.id)
    if rule:
        stmt = stmt.where(AlertNotice.rule == rule)
    return list(db.session.execute(stmt).scalars())


def failed_message(rid, minutes):
    receipt(at(minutes), rid, "success")
    receipt(at(minutes + 0.1), rid, "failed")


def test_failed_rate_fires_once_per_episode_and_clears(app):
    with app.app_context():
        receipt(at(0), "M1", "success")
        failed_message("M2", 1)
        receipt(at(2), "M3", "success")
        alerts.evaluate(at(3))  # 1 of 3 failed: 33%
        assert state("failed-rate").firing is False
        failed_message("M4", 4)
        queued = alerts.evaluate(at(5))  # 2 of 4: 50%
        assert [(n.rule, n.kind, n.episode) for n in queued] == [("failed-rate", "firing", 1)]
        assert state("failed-rate").firing and state("failed-rate").since == at(5)
        assert state("failed-rate").value == 50.0
        assert alerts.evaluate(at(6)) == [] and alerts.evaluate(at(6)) == []
        # The window is (now - 10 min, now]: at 12:11:54 it holds M3 and M4, still 50%.
        assert alerts.evaluate(at(11.9)) == []
        assert state("failed-rate").summary == "1 of 2 messages failed (50.0%) in 10 min"
        # At 12:14.5 the window holds nothing: below min_messages, the episode ends.
        cleared = alerts.evaluate(at(14.5))
        assert [(n.kind, n.episode) for n in cleared] == [("resolved", 1)]
        assert state("failed-rate").firing is False and state("failed-rate").since == at(14.5)
        resolved = json.loads(cleared[0].payload)
        assert resolved["state"] == "resolved" and resolved["firingSince"] == "2026-03-01T12:05:00Z"
        assert alerts.evaluate(at(15)) == []
        failed_message("N1", 20)
        failed_message("N2", 20.5)
        again = alerts.evaluate(at(21))
        assert [(n.kind, n.episode) for n in again] == [("firing", 2)]
        assert [(n.kind, n.episode) for n in notices("failed-rate")] == [
            ("firing", 1),
            ("resolved", 1),
            ("firing", 2),
        ]
        # Without ALERT_URL nothing is scheduled for delivery.
        assert all(n.next_attempt_at is None for n in notices())


def test_expired_count_counts_messages_not_pushes(app):
    with app.app_context():
        receipt(at(0), "E1", "expired")
        receipt(at(1), "E1", "expired")  # the same push again
        receipt(
            at(2), "E1", "expired", message="Viber message has expired (again)"
        )  # distinct receipt
        alerts.evaluate(at(3))
        assert state("expired").firing is False and state("expired").value == 1.0
        receipt(at(4), "E2", "expired")
        assert [n.kind for n in alerts.evaluate(at(5))] == ["firing"]
        # (12:01, 13:01] still holds E1's distinct receipt at 12:02 and E2.
        assert alerts.evaluate(at(61)) == []
        # (12:03, 13:03] holds E2 alone: one is not above the threshold.
        assert [n.kind for n in alerts.evaluate(at(63))] == ["resolved"]


def test_no_receipts_while_registered_after_grace(app):
    with app.app_context():
        register(at(0), "R1", "100")
        alerts.evaluate(at(2))  # within the grace period
        assert state("silence").firing is False
        assert [n.kind for n in alerts.evaluate(at(6))] == ["firing"]
        receipt(at(7), "R1", "success")
        assert [n.kind for n in alerts.evaluate(at(8))] == ["resolved"]
        # Receipts 30 minutes old no longer count; the registration is out of the window too.
        assert alerts.evaluate(at(40)) == [] and state("silence").firing is False


def test_notice_reaches_receiver_with_retries_and_backoff(app_config, receiver):
    from app import create_app

    app_config["ALERT_URL"] = receiver.url
    app = create_app(app_config)
    with app.app_context():
        db.create_all()
        failed_message("M1", 0)
        failed_message("M2", 1)
        result = alerts.check(at(2))
        assert [n.kind for n in result["notices"]] == ["firing"]
        assert [a.http_status for a in result["attempts"]] == [500]
        notice = notices("failed-rate")[0]
        assert notice.next_attempt_at == at(2) + timedelta(seconds=30)
        assert alerts.check(at(2.4))["attempts"] == []  # not due yet
        assert [a.http_status for a in alerts.check(at(2.5))["attempts"]] == [500]
        notice = notices("failed-rate")[0]
        assert notice.next_attempt_at == at(2.5) + timedelta(seconds=60)  # doubled
        assert [a.ok for a in alerts.check(at(3.5))["attempts"]] == [True]
        notice = notices("failed-rate")[0]
        assert (
            notice.delivered_at == at(3.5)
            and notice.next_attempt_at is None
            and notice.attempts == 3
        )
        assert len(receiver.bodies) == 3
        assert all(b == receiver.bodies[0] for b in receiver.bodies)
        assert (
            receiver.bodies[0]["rule"] == "failed-rate" and receiver.bodies[0]["state"] == "firing"
        )
        assert receiver.bodies[0]["value"] == 100.0
        assert receiver.headers[0]["Idempotency-Key"] == f"viberwatch-alert-{notice.id}"
        # The episode ends; the resolved notice goes out on the next pass.
        result = alerts.check(at(20))
        assert [n.kind for n in result["notices"]] == ["resolved"] and result["attempts"][0].ok
        assert receiver.bodies[-1]["state"] == "resolved"
        attempts = (
            db.session.execute(db.select(AlertAttempt).order_by(AlertAttempt.id)).scalars().all()
        )
        assert [(a.number, a.ok) for a in attempts] == [
            (1, False),
            (2, False),
            (3, True),
            (1, True),
        ]


def test_gives_up_after_max_attempts(app_config):
    from app import create_app

    failing = Receiver(failures=100)
    try:
        app = create_app({**app_config, "ALERT_URL": failing.url, "ALERT_MAX_ATTEMPTS": 2})
        with app.app_context():
            db.create_all()
            failed_message("M1", 0)
            failed_message("M2", 1)
            alerts.check(at(2))
            alerts.check(at(3))
            notice = notices("failed-rate")[0]
            assert notice.gave_up_at == at(3) and notice.next_attempt_at is None
            assert alerts.check(at(5))["attempts"] == []
            assert len(failing.bodies) == 2
    finally:
        failing.close()


def test_unreachable_receiver_is_a_failed_attempt(app_config):
    from app import create_app

    dead = Receiver(failures=0)
    dead.close()  # nothing listens on that port any more
    app = create_app({**app_config, "ALERT_URL": dead.url, "ALERT_TIMEOUT": 2})
    with app.app_context():
        db.create_all()
        failed_message("M1", 0)
        failed_message("M2", 1)
        [attempt] = alerts.check(at(2))["attempts"]
        assert (
            attempt.ok is False and attempt.http_status is None and "ConnectError" in attempt.error
        )


def test_banner_on_every_page_and_attempts_on_alerts_page(app, client):
    with app.app_context():
        failed_message("M1", 0)
        failed_message("M2", 1)
        alerts.evaluate(at(2))
    for path in ("/alerts", "/analytics"):
        html = client.get(path).get_data(as_text=True)
        assert 'class="alert-banner" role="alert"' in html and 'data-rule="failed-rate"' in html
    page = client.get("/alerts").get_data(as_text=True)
    assert 'id="rule-failed-rate" data-firing="true"' in page
    assert "not sent (no alert URL)" in page
    with app.app_context():
        alerts.evaluate(at(30))
    html = client.get("/analytics").get_data(as_text=True)
    assert "alert-banner" not in html


def test_the_navigation_links_to_alerts_with_the_firing_count(app, client):
    nav = re.compile(r'<nav class="nav".*?</nav>', re.S)
    link = re.compile(r'<a href="/alerts"[^>]*>Alerts(.*?)</a>', re.S)
    quiet = link.search(nav.search(client.get("/").get_data(as_text=True)).group(0))
    assert quiet and "nav-badge" not in quiet.group(1)
    with app.app_context():
        failed_message("M1", 0)
        failed_message("M2", 1)
        receipt(at(1.5), "M3", "expired")
        receipt(at(1.6), "M4", "expired")
        alerts.evaluate(at(2))
        assert len(alerts.firing()) == 2
    for path in ("/", "/conversations", "/alerts"):
        badge = link.search(nav.search(client.get(path).get_data(as_text=True)).group(0)).group(1)
        assert re.search(r'class="nav-badge"[^>]*>2<', badge), (path, badge)
    assert 'aria-current="page">Alerts' in client.get("/alerts").get_data(as_text=True)


def test_cli_check_uses_the_configured_clock(app_config):
    from app import create_app

    app = create_app({**app_config, "ALERT_CLOCK": lambda: at(6)})
    with app.app_context():
        db.create_all()
        register(at(0), "R1", "100")
    result = app.test_cli_runner().invoke(args=["alerts", "check"])
    assert result.exit_code == 0, result.output
    assert "silence" in result.output and "FIRING" in result.output
    assert "queued: silence firing (episode 1)" in result.output


def test_rules_from_json_and_bad_rules_named():
    rules = parse_rules('[{"name": "x", "kind": "expired_count", "threshold": 3}]')
    assert rules[0].window_minutes == 60 and rules[0].threshold == 3
    assert parse_rules("[]") == [] and len(parse_rules(None)) == 3
    for raw, needle in (
        ('[{"kind": "nope"}]', "rule-1].kind"),
        ('[{"name": "a", "kind": "failed_rate", "threshold": "5"}]', "[a].threshold"),
        (
            '[{"name": "a", "kind": "failed_rate"}, {"name": "a", "kind": "failed_rate"}]',
            "used twice",
        ),
        ("{oops", "not JSON"),
        ('{"name": "a"}', "must be a list"),
    ):
        with pytest.raises(RuleError) as exc:
            parse_rules(raw)
        assert needle in str(exc.value)


def test_rules_from_the_environment(monkeypatch, database_url):
    from app import create_app

    monkeypatch.setenv("VIBERWATCH_ALERT_RULES", '[{"name": "env-rule", "kind": "no_receipts"}]')
    monkeypatch.setenv("VIBERWATCH_ALERT_URL", "http://127.0.0.1:9/alerts")
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    assert [r.name for r in services(app).alert_rules] == ["env-rule"]
    assert app.config["ALERT_URL"] == "http://127.0.0.1:9/alerts"
