"""The ingest engine: bodies applied in batches (group commit) give each body its own answer and
the same record as any sequential order, under bursts, failures, kills and shutdowns, on SQLite
and on PostgreSQL."""

import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app import create_app, ingest
from app.core.signing import Signature
from app.ingest.committer import client, protocol
from app.observability import metrics
from app.ops.maintenance import recount_differences
from app.ops.rebuild import rebuild
from app.records.derivation import outbound_preview, reply_preview
from app.records.models import Activity, Contact, Message, RawBody, Receipt, Reply, db
from app.webhooks import reprocess
from support.bodies import encoded, receipt, registration, reply
from support.servers import committer_pid, production_process, worker_pids
from support.wait import until

STATUSES = ("success", "delivered", "seen")


# Recent: never-applied bodies older than REJECTED_KEEP_DAYS are deleted as others arrive.
_clock = {"at": datetime.now(UTC) - timedelta(hours=1)}


def job(endpoint: str, body: dict | bytes, content_type: str = "application/json") -> ingest.Job:
    """A body to hand to the writer (a dict as JSON, bytes as they are), received a millisecond
    after the one before."""
    _clock["at"] += timedelta(milliseconds=1)
    return ingest.Job(
        endpoint,
        body if isinstance(body, bytes) else encoded(body),
        content_type,
        {"content-type": content_type},
        "127.0.0.1",
        received_at=_clock["at"],
    )


def assert_consistent() -> None:
    """The record equals a rebuild from the raw bodies, the tally and rollups a recount, and every
    contact what its phone's messages and replies say."""
    report = rebuild(fix=False)
    assert report.differences == 0, report.lines()
    assert recount_differences() == []
    expected: dict = {}
    for m in db.session.execute(db.select(Message).where(Message.phone.is_not(None))).scalars():
        e = expected.setdefault(
            m.phone,
            {
                "messages": 0,
                "replies": 0,
                "activity": m.last_activity_at,
                "last_reply": None,
                "previews": [],
            },
        )
        e["messages"] += 1
        e["activity"] = max(e["activity"], m.last_activity_at)
        if m.registered_at is not None and m.text:
            e["previews"].append((m.registered_at, outbound_preview(m.text)))
    for r in db.session.execute(db.select(Reply)).scalars():
        e = expected.setdefault(
            r.phone,
            {
                "messages": 0,
                "replies": 0,
                "activity": r.received_at,
                "last_reply": None,
                "previews": [],
            },
        )
        e["replies"] += 1
        e["activity"] = max(e["activity"], r.received_at)
        e["last_reply"] = max(filter(None, (e["last_reply"], r.received_at)))
        e["previews"].append((r.received_at, reply_preview(r.text, r.file_name, r.media)))
    kept = {c.phone: c for c in db.session.execute(db.select(Contact)).scalars()}
    assert set(kept) == set(expected)
    for phone, e in expected.items():
        c = kept[phone]
        assert (c.messages_count, c.replies_count, c.last_activity_at, c.last_reply_at) == (
            e["messages"],
            e["replies"],
            e["activity"],
            e["last_reply"],
        ), phone
        assert c.last_preview == (max(e["previews"])[1] if e["previews"] else None), phone
    db.session.rollback()


def batch_counts() -> tuple[float, float]:
    """(transactions, bodies) the ingest writers of this process have committed so far."""
    samples = {
        s.name: s.value
        for metric in metrics.instruments().ingest_batch.collect()
        for s in metric.samples
    }
    return samples["viberwatch_ingest_batch_bodies_count"], samples[
        "viberwatch_ingest_batch_bodies_sum"
    ]


# --- one batch, many kinds of body ---------------------------------------------------------------


def test_a_batch_gives_each_body_its_own_answer_and_commits_the_valid_ones(app):
    with app.app_context():
        ingest.apply_batch([job("dr", receipt("known", "success", cost=True))])
        jobs = [
            job("dr", receipt("m1", "success", cost=True)),
            job("dr", b"{not json"),
            job(
                "dr", receipt("m1", "success", cost=True)
            ),  # the same push again, in the same batch
            job("dr", receipt("m1", "delivered")),
            job("dr", receipt("m1", "read")),
            job("register", registration("m1", "79000000001", "Your code is 1")),
            job("message", reply("m1", "79000000001", "thanks")),
            job("dr", receipt("m1", "seen"), content_type="text/plain"),
            job("dr", receipt("known", "success", cost=True)),  # a push stored by an earlier batch
            job("register", registration("m1", "79000000001", "Your code is 1")),
            job("dr", receipt("m2", "failed")),
        ]
        ingest.apply_batch(jobs)
        answers = [(j.result.http_status, j.result.outcome) for j in jobs]
        assert answers == [
            (200, "accepted"),
            (400, "rejected"),
            (200, "duplicate"),
            (200, "accepted"),
            (422, "rejected"),
            (201, "accepted"),
            (200, "accepted"),
            (415, "rejected"),
            (200, "duplicate"),
            (200, "duplicate"),
            (200, "accepted"),
        ]
        assert (
            jobs[4].result.error["field"] == "status"
            and jobs[7].result.error["field"] == "Content-Type"
        )
        # Every body is kept verbatim, with its own answer.
        raws = {r.id: r for r in db.session.execute(db.select(RawBody)).scalars()}
        assert len(raws) == 12
        for j in jobs:
            raw = raws[j.result.raw_id]
            assert (raw.body, raw.http_status, raw.outcome) == (
                j.body,
                j.result.http_status,
                j.result.outcome,
            )
        m1 = db.session.get(Message, "m1")
        assert (m1.status, m1.phone, m1.text, m1.receipts_count, m1.replies_count) == (
            "delivered",
            "79000000001",
            "Your code is 1",
            2,
            1,
        )
        assert (m1.cost_currency, m1.cost_local_price) == ("USD", 0.012)
        success = db.session.execute(
            db.select(Receipt).where(Receipt.request_id == "m1", Receipt.status == "success")
        ).scalar_one()
        assert success.times_received == 2 and success.last_received_at == jobs[2].received_at
        assert (
            db.session.execute(db.select(Receipt).where(Receipt.request_id == "known"))
            .scalar_one()
            .times_received
            == 2
        )
        assert db.session.get(Message, "m2").status == "failed"
        kinds = Counter(a.kind for a in db.session.execute(db.select(Activity)).scalars())
        assert kinds == {"receipt": 4, "register": 1, "reply": 1}
        assert_consistent()


def test_the_writer_takes_every_body_waiting_as_one_batch(app):
    """While one transaction waits for the write lock, the bodies that arrive wait, and the
    next transaction applies all of them."""
    before = batch_counts()
    results = []

    def submit(i):
        results.append(_ingest_in(app, "dr", encoded(receipt(f"w{i:02d}", "seen"))))

    with app.app_context():
        writer = ingest.writer_of(app)
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
        with ingest.write_lock().held():
            threads[0].start()
            until(lambda: writer.waiting() == 0 and not results)  # taken, stopped at the lock
            for t in threads[1:]:
                t.start()
            until(lambda: writer.waiting() == 11)
        for t in threads:
            t.join(10)
    assert sorted(r.http_status for r in results) == [200] * 12
    transactions, bodies = (a - b for a, b in zip(batch_counts(), before, strict=False))
    assert (transactions, bodies) == (2, 12)
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(Message)).scalar() == 12
        assert_consistent()


def test_the_writer_checkpoints_sqlite_outside_its_commits(app):
    """On SQLite the writer's own connection does not checkpoint inside a commit (while it
    holds the write lock every other process waits for): its automatic checkpoint is off, it
    checkpoints after its commits, and back in the pool the connection is like any other."""
    with app.app_context():
        link = ingest.Link()
        conn = link.connection()
        raw = conn.connection.dbapi_connection
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for i in range(2 * ingest.CHECKPOINT_EVERY + 1):
            assert ingest.apply_batch([job("dr", receipt(f"k{i:03d}", "delivered"))], link)
        assert link.connection() is conn  # one connection all along
        link.drop()
        if sqlite:
            assert raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        count = db.select(db.func.count()).select_from(Message)
        assert db.session.execute(count).scalar() == 2 * ingest.CHECKPOINT_EVERY + 1
        assert_consistent()


def test_a_body_not_committed_in_time_is_answered_503_and_still_applied(app_config):
    from app import create_app

    app = create_app({**app_config, "INGEST_WAIT_TIMEOUT": 0.5})
    with app.app_context():
        db.create_all()
    client = app.test_client()
    with app.app_context(), ingest.write_lock().held():  # a transaction that takes too long
        response = client.post(
            "/webhooks/viber/dr",
            data=encoded(receipt("slow" + "0" * 28, "seen")),
            content_type="application/json",
        )
    assert response.status_code == 503 and "not committed in time" in response.get_json()["error"]
    with app.app_context():

        def stored():
            db.session.remove()
            return db.session.get(Message, "slow" + "0" * 28)

        until(stored, 10, "the body to be applied after the answer")
        assert db.session.get(Message, "slow" + "0" * 28).status == "seen"
    ingest.stop(app)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def _ingest_in(app, endpoint: str, body: bytes) -> ingest.Result:
    with app.app_context():
        return ingest.ingest(
            endpoint, body, "application/json", {"Content-Type": "application/json"}
        )


FAILING = {
    "sqlite": [
        "CREATE TRIGGER poison BEFORE INSERT ON receipt WHEN NEW.request_id = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'simulated storage failure'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
        "IF NEW.request_id = 'poison' THEN RAISE EXCEPTION 'simulated storage failure'; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER poison BEFORE INSERT ON receipt FOR EACH ROW EXECUTE FUNCTION poison()",
    ],
}


def poison_receipts() -> None:
    """From now on the database refuses a receipt for the message `poison`."""
    for statement in FAILING[db.engine.dialect.name]:
        db.session.execute(db.text(statement))
    db.session.commit()


def cure_receipts() -> None:
    postgresql = db.engine.dialect.name == "postgresql"
    db.session.execute(db.text("DROP TRIGGER poison" + (" ON receipt" if postgresql else "")))
    db.session.commit()


def test_a_body_the_database_refuses_does_not_sink_its_batch(app):
    with app.app_context():
        poison_receipts()
        jobs = [
            job("dr", receipt("good1", "seen")),
            job("dr", receipt("poison", "seen")),
            job("message", reply("good2", "79000000002", "hi")),
            job("dr", b"[]"),
        ]
        ingest.apply_batch(jobs)
        assert [(j.result.http_status, j.result.outcome) for j in jobs] == [
            (200, "accepted"),
            (503, "rejected"),
            (200, "accepted"),
            (422, "rejected"),
        ]
        assert "not applied" in jobs[1].result.error["error"]
        kept = db.session.get(RawBody, jobs[1].result.raw_id)
        assert (kept.body, kept.outcome, kept.http_status) == (jobs[1].body, "rejected", 503)
        assert db.session.get(Message, "poison") is None
        assert db.session.get(Message, "good1").status == "seen"
        assert db.session.get(Message, "good2").phone == "79000000002"
        assert db.session.execute(db.select(db.func.count()).select_from(RawBody)).scalar() == 4
        cure_receipts()
        again = reprocess.reprocess(kept.id)
        assert (again.http_status, again.outcome) == (200, "accepted")
        assert db.session.get(Message, "poison").status == "seen"
        assert_consistent()


def snapshot() -> dict:
    """Every derived table, without the ids that depend on insertion order."""
    from app.records.models import (
        LatencyDay,
        LatencyHour,
        MessageTag,
        MessageTally,
        OutcomeHour,
        TagDay,
        TagHour,
        TagLatency,
    )

    def value(v):
        # Sums kept as floats (SQLite) differ in the last bits with the order of additions.
        return round(v, 6) if isinstance(v, float) else v

    def rows(model, skip=("id", "raw_id")):
        columns = [c.name for c in model.__table__.c if c.name not in skip]
        return sorted(
            (
                tuple(value(getattr(r, c)) for c in columns)
                for r in db.session.execute(db.select(model)).scalars()
                if getattr(r, "n", 1)
            ),
            key=repr,
        )  # a counter row at 0 counts nothing

    out = {
        m.__tablename__: rows(m)
        for m in (
            Message,
            Receipt,
            Reply,
            Contact,
            MessageTally,
            OutcomeHour,
            LatencyHour,
            LatencyDay,
            MessageTag,
            TagDay,
            TagHour,
            TagLatency,
        )
    }
    out["activity"] = rows(Activity)
    out["raw_body"] = rows(RawBody)
    db.session.rollback()
    return out


def test_a_refused_body_pushed_again_and_then_reprocessed_leaves_the_rebuilt_record(app):
    """NXCLOUD pushes again what was answered 503: the second copy is applied, and the first,
    reprocessed later under its older raw id, is a duplicate of it. The receipt's first
    arrival stays the copy that stored it, by the record and by a rebuild alike."""
    with app.app_context():
        poison_receipts()
        refused = job("dr", receipt("poison", "seen"))
        ingest.apply_batch([refused])
        assert (refused.result.http_status, refused.result.outcome) == (503, "rejected")
        cure_receipts()
        again = job("dr", receipt("poison", "seen"))
        ingest.apply_batch([again])
        assert again.result.outcome == "accepted"
        late = reprocess.reprocess(refused.result.raw_id)
        assert (late.http_status, late.outcome, late.raw_id) == (
            200,
            "duplicate",
            refused.result.raw_id,
        )
        stored = db.session.execute(db.select(Receipt)).scalar_one()
        assert (stored.raw_id, stored.received_at, stored.times_received) == (
            again.result.raw_id,
            again.received_at,
            2,
        )
        assert db.session.get(Message, "poison").seen_at == again.received_at
        assert_consistent()


def test_a_batch_that_waits_for_a_message_numbers_its_bodies_after_the_one_applied_first(
    app, app_config
):
    """Two transactions touch one message: the one that waits for another's row (here held by
    a third connection on PostgreSQL; SQLite has one writer at a time) is applied second, so
    its bodies follow in raw id order, the order a rebuild reads them. The same receipt pushed
    to both, received first by the one that waits, is a duplicate there: the receipt's first
    arrival is the one that stored it, by the record and by a rebuild alike."""
    other = create_app(app_config)  # a second server process, as far as ingest can tell
    with app.app_context():
        ingest.apply_batch([job("dr", receipt(rid, "success")) for rid in ("held1", "held2")])
        db.session.commit()
        waits = [job("dr", receipt("held1", "delivered")), job("dr", receipt("held2", "seen"))]
        first = job("dr", receipt("held2", "seen"))  # the same push, received after
        postgresql = db.engine.dialect.name == "postgresql"
        blocker = db.engine.connect()
        try:
            if postgresql:
                blocker.execute(
                    db.text("SELECT 1 FROM message WHERE request_id = 'held1' FOR UPDATE")
                )

            def apply_waiting():
                with app.app_context():
                    ingest.apply_batch(waits)

            waiting = threading.Thread(target=apply_waiting)
            waiting.start()
            if postgresql:
                # (pg_stat_activity is read afresh: a transaction keeps its first view of it.)
                until(
                    lambda: blocker.execute(
                        db.text(
                            "SELECT pg_stat_clear_snapshot(), count(*) FROM pg_stat_activity"
                            " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                        )
                    ).one()[1],
                    what="the batch waiting for the held message",
                )
            else:
                waiting.join(30)
            with other.app_context():
                ingest.apply_batch([first])
                db.engine.dispose()
        finally:
            blocker.rollback()
            blocker.close()
        waiting.join(30)
        assert not waiting.is_alive()
        outcomes = [j.result.outcome for j in (*waits, first)]
        assert outcomes == (
            ["accepted", "duplicate", "accepted"]
            if postgresql
            else ["accepted", "accepted", "duplicate"]
        )
        stored = db.session.execute(
            db.select(Receipt).where(Receipt.request_id == "held2", Receipt.status == "seen")
        ).scalar_one()
        assert stored.times_received == 2
        assert (first.result.raw_id < waits[1].result.raw_id) == postgresql
        assert db.session.get(Message, "held2").seen_at == (
            first.received_at if postgresql else waits[1].received_at
        )
        assert_consistent()


def test_any_split_into_batches_gives_the_same_record(app):
    """The same bodies, received at the same times, applied one at a time, seven at a time or
    all at once (past the size where PostgreSQL takes rows by COPY) end in the same tables."""
    rng = random.Random(5)
    work, _phones = burst(rng, 40)
    work += [
        ("dr", b"{broken"),
        ("message", encoded(reply("burst00003" + "0" * 20, "79200000003", "again"))),
    ]
    rng.shuffle(work)
    start = datetime.now(UTC) - timedelta(hours=1)
    times = [start + timedelta(milliseconds=137 * i) for i in range(len(work))]
    snapshots = []
    with app.app_context():
        for size in (1, 7, len(work)):
            jobs = [job(endpoint, body) for endpoint, body in work]
            for j, at in zip(jobs, times, strict=False):
                j.received_at = at
            for i in range(0, len(jobs), size):
                ingest.apply_batch(jobs[i : i + size])
            snapshots.append((snapshot(), [(j.result.http_status, j.result.outcome) for j in jobs]))
            assert_consistent()
            for model in (Activity, Receipt, Reply, RawBody, Message, Contact):
                db.session.execute(db.delete(model))
            from app.ops.maintenance import recount

            db.session.commit()
            recount()
    for other in snapshots[1:]:
        assert other[1] == snapshots[0][1]
        for table, rows in snapshots[0][0].items():
            assert other[0][table] == rows, table


def mixed_work(rng: random.Random) -> tuple[list, list]:
    """Bodies about messages stored before (`stored`, applied first) and messages first heard
    of in `work`: registrations again (more tags, new text, the same fields), receipts before
    and after their message's registration, pushed twice, replies, a registration past the tag
    limit, shuffled; then pairs of bodies to be received in the same instant: two replies to a
    new message, two to a stored one, and a reply to a stored message and the registration of
    a new one, both from one phone."""
    stored, work = [], []
    for i in range(12):
        rid, phone = f"mixs{i:02d}", f"7921{i:07d}"
        if i < 6:
            stored.append(("register", registration(rid, phone, f"first {i}", tags=["a"])))
        elif i < 9:
            stored.append(("dr", receipt(rid, "success", cost=True)))
        else:
            stored.append(("message", reply(rid, phone, f"early {i}")))
        work.append(("register", registration(rid, phone, f"again {i}", tags=["a", f"t{i % 3}"])))
    for i in range(12):
        rid, phone = f"mixn{i:02d}", f"7922{i:07d}"
        work.append(("register", registration(rid, phone, f"new {i}", tags=[f"t{i % 3}"])))
        if i % 4 == 0:
            work.append(("message", reply(rid, phone, f"thanks {i}")))
    for rid in [f"mixs{i:02d}" for i in range(12)] + [f"mixn{i:02d}" for i in range(12)]:
        for status in rng.sample(STATUSES, rng.randint(1, 3)):
            body = ("dr", receipt(rid, status, cost=status == "success"))
            work += [body, body] if rng.random() < 0.2 else [body]
    work.append(("register", registration("mixs00", "79210000000", "again 0", tags=["a", "t0"])))
    # One tag too many with the message's others: whichever of its registrations comes last.
    many = ["u", "v", "w", "x", "y"]
    work.append(("register", registration("mixn01", "79220000001", "x", tags=many)))
    work.append(("register", registration("mixs01", "79210000001", "y", tags=many)))
    rng.shuffle(work)
    work += [
        ("message", reply(rid, phone, text))
        for rid, phone in (("mixn05", "79220000005"), ("mixs10", "79210000010"))
        for text in ("tie one", "tie two")
    ]
    work.append(("message", reply("mixs09", "79210000009", "tie stored")))
    work.append(("register", registration("mixn12", "79210000009", "tie new")))
    return stored, work


def clear_records() -> None:
    from app.ops.maintenance import recount
    from app.records.models import MessageTag

    for model in (Activity, Receipt, Reply, RawBody, MessageTag, Message, Contact):
        db.session.execute(db.delete(model))
    db.session.commit()
    recount()


def test_new_and_stored_messages_in_one_batch_end_as_applied_one_by_one(app):
    """A batch writes the messages it is first to hear of whole and updates the stored ones:
    bodies about both, mixed in batches of every size (past the size where PostgreSQL takes
    rows by COPY too), end in the same answers and tables as applied one at a time, equal to a
    rebuild and a recount."""
    stored, work = mixed_work(random.Random(11))
    start = datetime.now(UTC) - timedelta(hours=1)
    times = [start + timedelta(milliseconds=137 * i) for i in range(len(stored) + len(work))]
    for tie in (-1, -3, -5):  # each pair received in one instant: the raw ids order them
        times[tie] = times[tie - 1]
    snapshots = []
    with app.app_context():
        for size in (1, 4, 9, len(work)):
            clear_records()
            jobs = [job(endpoint, encoded(body)) for endpoint, body in stored + work]
            for j, at in zip(jobs, times, strict=True):
                j.received_at = at
            for j in jobs[: len(stored)]:
                ingest.apply_batch([j])
            later = jobs[len(stored) :]
            for i in range(0, len(later), size):
                ingest.apply_batch(later[i : i + size])
            answers = [(j.result.http_status, j.result.outcome) for j in jobs]
            assert all(status < 500 for status, _ in answers)
            snapshots.append((snapshot(), answers))
            # The log and the receipts numbered in the order the bodies arrived.
            for model in (Activity, Receipt):
                raw_ids = list(db.session.scalars(db.select(model.raw_id).order_by(model.id)))
                assert raw_ids == sorted(raw_ids), model.__tablename__
            # (Not assert_consistent: a registration again touches its phone's contact but
            # leaves its message's last activity, so the contacts' rule there does not hold.)
            report = rebuild(fix=False)
            assert report.differences == 0, report.lines()
            assert recount_differences() == []
        first = snapshots[0]
        assert Counter(outcome for _, outcome in first[1])["rejected"] == 2  # the tag limit
        assert {"duplicate", "accepted"} <= {outcome for _, outcome in first[1]}
        for other in snapshots[1:]:
            assert other[1] == first[1]
            for table, rows in first[0].items():
                assert other[0][table] == rows, table
        assert db.session.get(Message, "mixn05").last_reply_text == "tie two"
        assert db.session.get(Message, "mixs10").last_reply_text == "tie two"
        assert db.session.get(Contact, "79210000009").last_preview == "→ tie new"


def test_a_message_created_meanwhile_by_another_batch_is_read_as_stored(app, app_config):
    """PostgreSQL: a batch finds a message not stored yet while another transaction is creating
    it; its insert waits for that one, finds the row once it commits, and the batch reads and
    locks it as a stored message: the receipt both pushed is a duplicate in the second, and
    each batch commits in one transaction (none falls back to one body at a time)."""
    if not app_config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: no message is created meanwhile")
    other = create_app(app_config)  # a second server process, as far as ingest can tell
    with app.app_context():
        ingest.apply_batch([job("dr", receipt("race-held", "success"))])
        committed = batch_counts()
        blocker = db.engine.connect()
        try:
            blocker.execute(
                db.text("SELECT 1 FROM message WHERE request_id = 'race-held' FOR UPDATE")
            )
            # Creates race-new, then waits for race-held: it holds race-new's insert open.
            creating = [
                job("register", registration("race-new", "79230000001", "first", tags=["x"])),
                job("dr", receipt("race-new", "delivered", cost=True)),
                job("dr", receipt("race-held", "seen")),
            ]
            meanwhile = [
                job("register", registration("race-new", "79230000001", "again", tags=["y"])),
                job("dr", receipt("race-new", "delivered", cost=True)),
                job("dr", receipt("race-new", "seen")),
            ]

            def apply_in(app_, jobs):
                with app_.app_context():
                    ingest.apply_batch(jobs)

            first = threading.Thread(target=apply_in, args=(other, creating))
            first.start()
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            until(
                lambda: (
                    blocker.execute(db.text(f"SELECT pg_stat_clear_snapshot(), ({waiting})")).one()[
                        1
                    ]
                    == 1
                ),
                what="the first batch waiting for the held message",
            )
            second = threading.Thread(target=apply_in, args=(app, meanwhile))
            second.start()
            until(
                lambda: (
                    blocker.execute(db.text(f"SELECT pg_stat_clear_snapshot(), ({waiting})")).one()[
                        1
                    ]
                    == 2
                ),
                what="the second batch waiting for the message being created",
            )
        finally:
            blocker.rollback()
            blocker.close()
        first.join(30)
        second.join(30)
        assert not first.is_alive() and not second.is_alive()
        assert batch_counts() == (committed[0] + 2, committed[1] + 6)
        other.extensions["sqlalchemy"].engines[None].dispose()
        assert [j.result.outcome for j in creating] == ["accepted"] * 3
        assert [(j.result.http_status, j.result.outcome) for j in meanwhile] == [
            (200, "accepted"),
            (200, "duplicate"),
            (200, "accepted"),
        ]
        m = db.session.get(Message, "race-new")
        assert (m.status, m.text, m.tags, m.receipts_count, m.cost_local_price) == (
            "seen",
            "again",
            "x,y",
            2,
            0.012,
        )
        assert m.created_at == creating[0].received_at
        assert_consistent()


# --- the production command ----------------------------------------------------------------------


@pytest.fixture
def production(app, database_url, tmp_path, request):
    """The production command; `committer` parametrized indirectly: "off" runs it with a
    writer per worker (INGEST_COMMITTER=false), otherwise with the one ingest committer."""
    env = {"DATABASE_URL": database_url, "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "32"}
    if getattr(request, "param", "on") == "off":
        env["VIBERWATCH_INGEST_COMMITTER"] = "false"
    with production_process(env, tmp_path / "gunicorn.log") as (url, proc):
        if getattr(request, "param", "on") == "off":
            assert committer_pid(proc.pid) is None
        else:
            assert committer_pid(proc.pid) is not None
        yield url, proc


def burst(rng: random.Random, messages: int) -> tuple[list[tuple[str, bytes]], dict]:
    """Three receipts per message, a tenth pushed twice, a reply to every seventh message and a
    registration of every fifth, shuffled."""
    work, phones = [], {}
    for i in range(messages):
        rid = f"burst{i:05d}{'0' * 20}"
        phone = phones[rid] = f"7920{i % 250:07d}"
        for status in STATUSES:
            body = encoded(receipt(rid, status, cost=status == "success"))
            work.append(("dr", body))
            if rng.random() < 0.1:
                work.append(("dr", body))
        if i % 7 == 0:
            work.append(("message", encoded(reply(rid, phone, f"thanks {i}"))))
        if i % 5 == 0:
            work.append(("register", encoded(registration(rid, phone, f"Your code is {i}"))))
    rng.shuffle(work)
    return work, phones


def post_all(url: str, work: list, token: str, connections: int = 64) -> list[int]:
    paths = {
        "dr": "/webhooks/viber/dr",
        "message": "/webhooks/viber/message",
        "register": "/api/messages",
    }
    local = threading.local()

    def post(item):
        endpoint, body = item
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(base_url=url, timeout=60)
        headers = {"Content-Type": "application/json"}
        if endpoint == "register":
            headers["Authorization"] = f"Bearer {token}"
        return client.post(paths[endpoint], content=body, headers=headers).status_code

    with ThreadPoolExecutor(max_workers=connections) as pool:
        return list(pool.map(post, work))


@pytest.mark.parametrize(
    "production", ["on", "off"], indirect=True, ids=["committer", "per-worker"]
)
def test_a_burst_from_64_connections_ends_in_the_folded_record(app, api_token, production):
    url, _proc = production
    work, phones = burst(random.Random(12), 1000)
    assert Counter(e for e, _ in work)["dr"] >= 3000
    statuses = post_all(url, work, api_token)
    assert Counter(statuses) == {200: len(work) - 200, 201: 200}
    with app.app_context():
        rows = {m.request_id: m for m in db.session.execute(db.select(Message)).scalars()}
        assert len(rows) == 1000
        for rid, m in rows.items():
            assert (m.status, m.code, m.receipts_count, m.cost_local_price) == (
                "seen",
                11002,
                3,
                0.012,
            ), rid
            assert m.phone == phones[rid] or (
                m.phone is None and int(rid[5:10]) % 5 and int(rid[5:10]) % 7
            )
        outcomes = Counter(db.session.execute(db.select(RawBody.outcome)).scalars())
        assert sum(outcomes.values()) == len(work)
        assert outcomes["accepted"] == 3000 + 143 + 200
        assert db.session.execute(db.select(db.func.count()).select_from(Activity)).scalar() == 3343
        assert_consistent()


def hammer(url: str, stop: threading.Event, log: list, prefix: str, connections: int = 16) -> None:
    """Post receipts for new messages from `connections` threads until `stop`; log (body, status)."""

    def loop(n):
        with httpx.Client(base_url=url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                body = encoded(
                    receipt(f"{prefix}{n:02d}{i // 3:08d}", STATUSES[i % 3], cost=i % 3 == 0)
                )
                try:
                    status = client.post(
                        "/webhooks/viber/dr",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    ).status_code
                except httpx.HTTPError:
                    status = None
                log.append((body, status))
                i += 1 if status is not None else 0

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    return threads


def wait_for_answers(log: list, n: int, seconds: float = 120) -> None:
    """Until `n` more requests have been answered 200 (whatever the machine's load)."""
    target = sum(1 for _, status in list(log) if status == 200) + n
    deadline = time.monotonic() + seconds
    while sum(1 for _, status in list(log) if status == 200) < target:
        assert time.monotonic() < deadline, "the server stopped answering"
        time.sleep(0.05)


def stored_bodies() -> Counter:
    return Counter(
        db.session.execute(db.select(RawBody.body).where(RawBody.endpoint == "dr")).scalars()
    )


def test_a_killed_worker_loses_only_what_it_had_not_answered(app, production):
    url, proc = production
    stop, log = threading.Event(), []
    threads = hammer(url, stop, log, "kill")
    wait_for_answers(log, 100)
    victim = worker_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for_answers(log, 100)  # the master starts a new worker; posting goes on
    stop.set()
    for t in threads:
        t.join(30)
    answered = Counter(body for body, status in log if status == 200)
    assert all(status in (200, None) for _, status in log)
    with app.app_context():
        stored = stored_bodies()
        assert not (answered - stored), "a body answered 200 is missing"
        assert_consistent()


def test_a_stopped_server_answers_every_body_it_committed(app, production):
    url, proc = production
    stop, log = threading.Event(), []
    threads = hammer(url, stop, log, "term")
    wait_for_answers(log, 100)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    stop.set()
    for t in threads:
        t.join(30)
    answered = Counter(body for body, status in log if status == 200)
    assert all(status in (200, None) for _, status in log)
    with app.app_context():
        # Nothing answered 200 is lost, and nothing committed went unanswered.
        assert stored_bodies() == answered
        assert_consistent()


def test_the_workers_hand_their_bodies_to_the_committer(app, production):
    """While the committer is stopped (SIGSTOP) a webhook waits for it; it is answered, and
    applied once, when the committer goes on."""
    url, proc = production
    pid = committer_pid(proc.pid)
    body = encoded(receipt("hand" + "0" * 21, "delivered"))
    answers = []

    def post():
        answers.append(
            httpx.post(
                url + "/webhooks/viber/dr",
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=60,
            ).status_code
        )

    os.kill(pid, signal.SIGSTOP)
    try:
        poster = threading.Thread(target=post)
        poster.start()
        poster.join(1.5)
        assert answers == [], "answered without the committer"
    finally:
        os.kill(pid, signal.SIGCONT)
    poster.join(60)
    assert answers == [200]
    with app.app_context():
        assert stored_bodies() == Counter({body: 1})
        assert db.session.get(Message, "hand" + "0" * 21).status == "delivered"


def test_a_killed_committer_loses_only_what_it_had_not_answered(app, production):
    """The workers apply the bodies themselves until the master has started it again."""
    url, proc = production
    stop, log = threading.Event(), []
    threads = hammer(url, stop, log, "ckil")
    wait_for_answers(log, 100)
    first = committer_pid(proc.pid)
    os.kill(first, signal.SIGKILL)
    wait_for_answers(log, 100)
    until(lambda: committer_pid(proc.pid) not in (None, first), 60, "a new committer")
    wait_for_answers(log, 100)
    stop.set()
    for t in threads:
        t.join(30)
    answered = Counter(body for body, status in log if status == 200)
    assert all(status == 200 for _, status in log)
    with app.app_context():
        stored = stored_bodies()
        assert not (answered - stored), "a body answered 200 is missing"
        # One the committer had committed when it was killed is stored again, a duplicate.
        assert all(
            outcome in ("accepted", "duplicate")
            for outcome in db.session.execute(db.select(RawBody.outcome)).scalars()
        )
        assert_consistent()


def test_a_stopped_server_stops_its_committer_after_its_workers(app, production):
    url, proc = production
    pid = committer_pid(proc.pid)
    socket_path = Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2].decode())
    assert socket_path.is_socket()
    assert socket_path.stat().st_mode & 0o777 == 0o600
    assert socket_path.parent.stat().st_mode & 0o777 == 0o700
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    until(lambda: not Path(f"/proc/{pid}").exists(), 30, "the committer to end")
    assert not socket_path.parent.exists()


def test_a_body_crosses_to_the_committer_unchanged():
    """Bytes that are not UTF-8, a NUL, no content type, headers beyond ASCII, a signature: the
    committer gets the job the worker had, and a frame cut short waits for its rest."""
    sent = ingest.Job(
        "dr",
        b'{"a": "\xff\x00\xc3"}' + bytes(range(256)),
        None,
        {"user-agent": "caf\u00e9 \u2603", "sign": "ab"},
        "10.0.0.1",
        signature=Signature("ab", "key", 1_700_000_000_000),
    )
    one = protocol.job_frame(sent)
    whole = one * 2
    buf = bytearray(whole[:-3])
    taken = protocol.frames(buf)
    assert len(taken) == 1 and bytes(buf) == one[:-3]
    buf += whole[-3:]
    taken += protocol.frames(buf)
    assert buf == bytearray() and len(taken) == 2
    for meta, body in taken:
        got = protocol.job_of(meta, body)
        assert (got.endpoint, got.body, got.content_type, got.headers, got.remote_addr) == (
            sent.endpoint,
            sent.body,
            sent.content_type,
            sent.headers,
            sent.remote_addr,
        )
        assert got.signature == sent.signature and got.received_at is None


def test_a_committer_that_does_not_answer_in_time_gets_the_body_answered_503(tmp_path):
    """The hand-over's time limit: a committer that took the body and says nothing within
    INGEST_WAIT_TIMEOUT leaves it answered 503 (it is kept: the committer still has it), and
    the next body goes over a new connection; no committer listening: the worker applies it."""
    import socket

    path = str(tmp_path / "committer.sock")
    job = ingest.Job("dr", b"{}", "application/json", {}, "127.0.0.1")
    assert client.submit(path, job, 0.3) is None  # nobody listens
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    results = []
    worker = threading.Thread(
        target=lambda: results.extend(client.submit(path, job, 0.3) for _ in range(2))
    )
    worker.start()
    taken = [listener.accept()[0] for _ in range(2)]
    worker.join(30)
    assert not worker.is_alive()
    for conn in taken:  # each connection got the whole frame
        conn.settimeout(5)
        buf = bytearray()
        while not (got := protocol.frames(buf)):
            buf += conn.recv(1 << 16)
        assert protocol.job_of(*got[0]).body == b"{}"
        conn.close()
    listener.close()
    assert [(r.http_status, r.outcome) for r in results] == [(503, "rejected")] * 2
    assert "not committed in time" in results[0].error["error"]
