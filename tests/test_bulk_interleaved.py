"""100,000 registrations through the bulk API, interleaved with their receipts on the
production command: every message ends with its registration's phone, text and tags and its
receipt's status, whichever arrived first, and every rollup equals a recount."""

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.ops.maintenance import recount_differences
from app.records.models import Message, MessageTag, db
from support.bodies import receipt, registration
from support.servers import production_server

MESSAGES = 100_000
BATCH = 1_000
RECEIPT_SENDERS = 12
STATUSES = ("success", "delivered", "seen", "failed", "expired")


@pytest.fixture
def server(app, database_url, tmp_path):
    env = {"DATABASE_URL": database_url, "WEB_CONCURRENCY": "2"}
    with production_server(env, tmp_path / "gunicorn.log", seconds=120) as url:
        yield url


def expected(i: int) -> dict:
    return {
        "phone": f"+7{i:010d}",
        "text": f"order {i} shipped",
        "tags": ["bulk", f"wave-{i % 7}"] if i % 3 else [],
        "status": STATUSES[i % len(STATUSES)],
    }


def test_registrations_interleaved_with_receipts_end_exact(app, server, api_token):
    rnd = random.Random(5)
    ids = [f"bulk{i:06d}" for i in range(MESSAGES)]
    batches = [list(range(start, start + BATCH)) for start in range(0, MESSAGES, BATCH)]
    rnd.shuffle(batches)
    order = list(range(MESSAGES))
    rnd.shuffle(order)
    failures: list[str] = []

    def register_all() -> None:
        with httpx.Client(base_url=server, timeout=120) as client:
            for n, batch in enumerate(batches):
                items = []
                for i in batch:
                    e = expected(i)
                    extra = {"tags": e["tags"]} if e["tags"] else {}
                    items.append(registration(ids[i], e["phone"], e["text"], **extra))
                answer = client.post(
                    "/api/messages", json=items, headers={"Authorization": f"Bearer {api_token}"}
                )
                if answer.status_code != 200 or answer.json()["accepted"] != len(items):
                    failures.append(f"batch {n}: {answer.status_code} {answer.text[:200]}")

    def send_receipts(share: list[int]) -> None:
        with httpx.Client(base_url=server, timeout=120) as client:
            for i in share:
                status = expected(i)["status"]
                body = receipt(ids[i], status, code=11000 if status == "failed" else 0)
                answer = client.post("/webhooks/viber/dr", json=body)
                if answer.status_code != 200:
                    failures.append(f"receipt {i}: {answer.status_code} {answer.text[:200]}")

    # Registrations and receipts start together, each in a random order: a message's receipt
    # may come before, beside or after its registration.
    shares = [order[k::RECEIPT_SENDERS] for k in range(RECEIPT_SENDERS)]
    assert sorted(i for share in shares for i in share) == list(range(MESSAGES))
    with ThreadPoolExecutor(RECEIPT_SENDERS + 1) as pool:
        jobs = [pool.submit(register_all)] + [pool.submit(send_receipts, s) for s in shares]
        for job in jobs:
            job.result()
    assert failures == [], failures[:5]

    with app.app_context():
        rows = {
            r.request_id: r
            for r in db.session.execute(
                db.select(
                    Message.request_id, Message.phone, Message.text, Message.tags, Message.status
                )
            )
        }
        tags: dict[str, set] = {}
        for rid, tag in db.session.execute(db.select(MessageTag.request_id, MessageTag.tag)):
            tags.setdefault(rid, set()).add(tag)
        assert len(rows) == MESSAGES
        wrong = []
        for i, rid in enumerate(ids):
            e, r = expected(i), rows[rid]
            got = (r.phone, r.text, sorted(tags.get(rid, ())), r.status)
            if got != (e["phone"], e["text"], sorted(e["tags"]), e["status"]):
                wrong.append((rid, got))
        assert wrong == [], wrong[:5]
        assert recount_differences() == []
