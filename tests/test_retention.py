"""Bodies that were never applied (rejected, refused) have a total bound and an age limit;
accepted bodies are never deleted, and the dashboard says when the cap deleted some."""

import json
from datetime import timedelta

import pytest

from app import create_app
from app.core.times import utcnow
from app.records import retention
from app.records.models import RawBody, db
from support.accounts import create_test_user, log_in
from support.fixtures import fixture_json

DR = "/webhooks/viber/dr"
CAP = 20_000


@pytest.fixture
def app_config(app_config):
    return {**app_config, "REJECTED_KEEP_BYTES": CAP, "REJECTED_KEEP_DAYS": 30}


def stored(app):
    with app.app_context():
        rows = db.session.execute(db.select(RawBody).order_by(RawBody.id)).scalars().all()
        db.session.expunge_all()
        return rows


def never_applied(rows):
    return [r for r in rows if r.outcome in ("rejected", "refused")]


def test_a_flood_of_invalid_bodies_stays_under_the_cap(app, anon_client):
    accepted, last = [], None
    for i in range(40):
        if i % 10 == 0:
            body = json.dumps({**fixture_json("dr_seen"), "requestId": f"kept-{i}"}).encode()
            assert (
                anon_client.post(DR, data=body, content_type="application/json").status_code == 200
            )
            accepted.append(body)
        last = json.dumps({"status": "read", "padding": "x" * 2000, "n": i}).encode()
        assert anon_client.post(DR, data=last, content_type="application/json").status_code == 422
    rows = stored(app)
    kept = never_applied(rows)
    assert sum(len(r.body) for r in kept) <= CAP
    assert kept[-1].body == last  # the newest stay, the oldest went
    assert len(kept) < 40
    # Every accepted body is still there.
    assert [r.body for r in rows if r.outcome == "accepted"] == accepted
    with app.app_context():
        bodies, size = retention.dropped_since(24)
    assert bodies == 40 - len(kept) and size > 40_000
    create_test_user(app)
    page = log_in(app, app.test_client()).get("/").get_data(as_text=True)
    assert f"{bodies} rejected or refused bodies" in page and "REJECTED_KEEP_BYTES" in page


def test_refused_bodies_count_against_the_cap_too(app_config):
    app = create_app({**app_config, "WEBHOOK_TOKEN": "t0ken"})
    with app.app_context():
        db.create_all()
    client = app.test_client()
    body = json.dumps({**fixture_json("dr_seen"), "padding": "y" * 3000}).encode()
    for _ in range(15):
        assert client.post(DR, data=body, content_type="application/json").status_code == 401
    kept = never_applied(stored(app))
    assert 0 < len(kept) < 15 and sum(len(r.body) for r in kept) <= CAP
    with app.app_context():
        db.engine.dispose()


def test_bodies_older_than_the_age_limit_go_and_accepted_ones_stay(app, anon_client):
    old_accepted = json.dumps(fixture_json("dr_seen")).encode()
    anon_client.post(DR, data=old_accepted, content_type="application/json")
    anon_client.post(DR, data=b'{"old": true}', content_type="application/json")
    with app.app_context():
        db.session.execute(db.update(RawBody).values(received_at=utcnow() - timedelta(days=31)))
        db.session.commit()
    # A later process notices on its first kept body.
    again = create_app({**app.config, "TESTING": True})
    again.test_client().post(DR, data=b'{"new": true}', content_type="application/json")
    rows = stored(app)
    assert [(r.outcome, r.body) for r in rows] == [
        ("accepted", old_accepted),
        ("rejected", b'{"new": true}'),
    ]
    with again.app_context():
        db.engine.dispose()
