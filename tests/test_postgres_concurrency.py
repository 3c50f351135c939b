"""Many parallel pushes for the same messages, through the production server with several
workers, end in the same record as any sequential order (on SQLite and on PostgreSQL)."""

import json
import random
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.records.models import Activity, Contact, Message, RawBody, Receipt, Reply, db
from support.bodies import receipt, reply
from support.servers import production_server

COPIES = 6  # each distinct body is pushed this many times (NXCLOUD retries, several devices)
MESSAGES = 4


@pytest.fixture
def gunicorn_server(app, database_url, tmp_path):
    """`gunicorn -c gunicorn.conf.py 'app:create_app()'` with three workers on the test database."""
    env = {"DATABASE_URL": database_url, "WEB_CONCURRENCY": "3", "GUNICORN_THREADS": "8"}
    with production_server(env, tmp_path / "gunicorn.log") as url:
        yield url


def bodies_for(rid: str, phone: str) -> list[tuple[str, dict]]:
    statuses = ("success", "delivered", "seen", "expired", "failed")
    return [("dr", receipt(rid, status, cost=status == "success")) for status in statuses] + [
        ("message", reply(rid, phone, f"thanks {rid}", appkey="app1"))
    ]


def post(url: str, endpoint: str, body: dict) -> int:
    req = urllib.request.Request(
        f"{url}/webhooks/viber/{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_parallel_pushes_to_several_workers_end_in_the_folded_state(app, gunicorn_server):
    messages = {f"conc{i:02d}{'0' * 24}": f"7910000{i:04d}" for i in range(MESSAGES)}
    work = [
        (endpoint, body)
        for rid, phone in messages.items()
        for endpoint, body in bodies_for(rid, phone)
        for _ in range(COPIES)
    ]
    random.Random(6).shuffle(work)
    with ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(lambda w: post(gunicorn_server, *w), work))
    assert Counter(statuses) == {200: len(work)}

    distinct_receipts = 5
    with app.app_context():
        for rid, phone in messages.items():
            m = db.session.get(Message, rid)
            assert m.status == "seen" and m.code == 11002
            assert m.anomaly and set(m.anomalies.split("; ")) == {
                "expired beside seen",
                "failed beside seen",
            }
            assert m.phone == phone
            assert (m.receipts_count, m.replies_count) == (distinct_receipts, 1)
            assert (m.cost_currency, m.cost_local_price) == ("USD", 0.012)
            receipts = (
                db.session.execute(db.select(Receipt).where(Receipt.request_id == rid))
                .scalars()
                .all()
            )
            assert sorted(r.times_received for r in receipts) == [COPIES] * distinct_receipts
            times = {r.status: r.received_at for r in receipts}
            assert (m.accepted_at, m.delivered_at, m.seen_at, m.failed_at, m.expired_at) == (
                times["success"],
                times["delivered"],
                times["seen"],
                times["failed"],
                times["expired"],
            )
            assert m.last_activity_at == max(
                [r.received_at for r in receipts]
                + [m.created_at]
                + list(
                    db.session.execute(
                        db.select(Reply.received_at).where(Reply.trace_request_id == rid)
                    ).scalars()
                )
            )
            reply = db.session.execute(
                db.select(Reply).where(Reply.trace_request_id == rid)
            ).scalar_one()
            assert reply.times_received == COPIES
            contact = db.session.get(Contact, phone)
            assert (contact.messages_count, contact.replies_count) == (1, 1)

        outcomes = Counter(db.session.execute(db.select(RawBody.outcome)).scalars())
        accepted = MESSAGES * (distinct_receipts + 1)
        assert outcomes == {"accepted": accepted, "duplicate": len(work) - accepted}
        kinds = Counter(db.session.execute(db.select(Activity.kind)).scalars())
        assert kinds == {"receipt": MESSAGES * distinct_receipts, "reply": MESSAGES}


def test_nul_in_an_id_is_rejected_and_kept_on_every_database(app, client):
    # PostgreSQL text columns cannot hold NUL: the id stays only in the stored raw body.
    body = json.dumps(receipt("a\u0000b", "seen")).encode()
    response = client.post("/webhooks/viber/dr", data=body, content_type="application/json")
    assert response.status_code == 422 and response.get_json()["field"] == "requestId"
    with app.app_context():
        raw = db.session.execute(db.select(RawBody)).scalar_one()
        assert (raw.outcome, raw.request_id, raw.body) == ("rejected", None, body)
