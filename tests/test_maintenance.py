"""seed, purge and rebuild: on a real database, checked against the core's own derivation."""

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, text

from app.core.services import services
from app.core.times import utcnow
from app.ops.maintenance import parse_age, purge
from app.ops.rebuild import rebuild
from app.ops.seed import seed
from app.records.models import Activity, Contact, Message, RawBody, Receipt, Reply, db
from support.bodies import post_json
from support.fixtures import fixture_json
from support.stored import stored_columns


def zone(app):
    return services(app).sendtime_zone


def count(model) -> int:
    return db.session.execute(db.select(func.count()).select_from(model)).scalar()


def assert_contacts_consistent():
    messages = dict(
        db.session.execute(
            db.select(Message.phone, func.count())
            .where(Message.phone.is_not(None))
            .group_by(Message.phone)
        ).all()
    )
    replies = dict(
        db.session.execute(db.select(Reply.phone, func.count()).group_by(Reply.phone)).all()
    )
    contacts = {
        c.phone: (c.messages_count, c.replies_count)
        for c in db.session.execute(db.select(Contact)).scalars()
    }
    expected = {p: (messages.get(p, 0), replies.get(p, 0)) for p in set(messages) | set(replies)}
    assert contacts == expected


def assert_refresh_changes_nothing():
    """Every message is already as ingest would derive it from its stored receipts and replies."""
    messages = {m.request_id: m for m in db.session.execute(db.select(Message)).scalars()}
    for rid, columns in stored_columns(list(messages)).items():
        assert {k: v for k, v in columns.items() if getattr(messages[rid], k) != v} == {}, rid
    db.session.rollback()


def test_seed_writes_what_ingest_would(app):
    with app.app_context():
        written = seed(400, random_seed=7, zone=zone(app))
        assert written["message"] == count(Message) == 400
        assert written["receipt"] == count(Receipt) and written["reply"] == count(Reply) > 0
        assert written["raw_body"] == count(RawBody) and written["activity"] == count(Activity)
        statuses = Counter(db.session.execute(db.select(Message.status)).scalars())
        assert {"success", "delivered", "seen", "failed", "expired"} <= set(statuses)
        assert statuses["seen"] > statuses["failed"]
        # Every accepted body's effect is there, and its activity row points at it.
        accepted = (
            count(RawBody)
            - db.session.execute(
                db.select(func.count()).where(RawBody.outcome == "duplicate")
            ).scalar()
        )
        assert accepted == count(Activity)
        assert_refresh_changes_nothing()
        assert_contacts_consistent()
        report = rebuild()
        assert report.messages == 400 and report.differences == 0, report.lines()


def test_seed_continues_after_existing_rows(app, client):
    assert client.post("/webhooks/viber/dr", json=fixture_json("dr_seen")).status_code == 200
    with app.app_context():
        seed(50, random_seed=1, zone=zone(app))
        seed(50, random_seed=2, zone=zone(app))
        assert count(Message) == 101
        assert rebuild().differences == 0
    # Ids go on from the seeded rows: ingest still works afterwards.
    assert client.post("/webhooks/viber/dr", json=fixture_json("dr_delivered")).status_code == 200
    with app.app_context():
        assert db.session.execute(db.select(func.max(RawBody.id))).scalar() == count(RawBody)


def ingest_some(client):
    reply = fixture_json("reply_text")
    rid = reply["traceRequestId"]
    for status in ("success", "delivered", "seen", "expired"):
        body = fixture_json(f"dr_{status}")
        body["requestId"] = rid
        assert post_json(client, "/webhooks/viber/dr", body).status_code == 200
    assert (
        post_json(
            client, "/webhooks/viber/dr", {**fixture_json("dr_delivered"), "requestId": rid}
        ).status_code
        == 200
    )  # a second device
    assert post_json(client, "/webhooks/viber/message", reply).status_code == 200
    assert (
        post_json(client, "/webhooks/viber/message", fixture_json("reply_media")).status_code == 200
    )
    assert post_json(client, "/webhooks/viber/dr", fixture_json("dr_failed")).status_code == 200
    assert post_json(client, "/webhooks/viber/dr", {"status": "read"}).status_code == 422
    return rid


def test_rebuild_of_ingested_record_finds_nothing(app, client):
    ingest_some(client)
    with app.app_context():
        report = rebuild()
        assert report.messages == 2 and report.differences == 0, report.lines()


def test_rebuild_reports_and_repairs_differences(app, client):
    rid = ingest_some(client)
    with app.app_context():
        db.session.execute(
            db.update(Message)
            .where(Message.request_id == rid)
            .values(status="failed", replies_count=0, last_reply_text="forged")
        )
        other = fixture_json("dr_failed")["requestId"]
        db.session.execute(
            db.update(Message).where(Message.request_id == other).values(status="seen")
        )
        db.session.execute(
            db.delete(Activity).where(
                Activity.raw_id.in_(
                    db.select(Receipt.raw_id).where(
                        Receipt.request_id == rid, Receipt.status == "seen"
                    )
                )
            )
        )
        db.session.execute(
            db.delete(Receipt).where(Receipt.request_id == rid, Receipt.status == "seen")
        )
        db.session.execute(
            db.update(Receipt)
            .where(Receipt.request_id == rid, Receipt.status == "delivered")
            .values(times_received=9)
        )
        db.session.commit()

        check = rebuild(fix=False)
        assert (
            check.changed_messages == 2
            and check.receipts_missing == 1
            and check.receipts_fixed == 1
        )
        assert check.columns["status"] == 2
        assert {"replies_count", "last_reply_text"} <= set(check.columns)
        assert any(rid in line for line in check.lines())
        assert db.session.get(Message, rid).status == "failed"  # --check changes nothing

        fixed = rebuild()
        assert fixed.differences == check.differences
        msg = db.session.get(Message, rid)
        assert (msg.status, msg.replies_count, msg.last_reply_text) == (
            "seen",
            2,
            "[media] xxxx.jpeg",
        )
        assert db.session.get(Message, other).status == "failed"
        delivered = db.session.execute(
            db.select(Receipt).where(Receipt.request_id == rid, Receipt.status == "delivered")
        ).scalar_one()
        assert delivered.times_received == 2
        assert_refresh_changes_nothing()
        assert rebuild().differences == 0


def test_purge_deletes_old_messages_and_everything_about_them(app, client):
    with app.app_context():
        seed(300, random_seed=3, days=180, zone=zone(app))
    ingest_some(client)  # recent: stays
    with app.app_context():
        old = set(
            db.session.execute(
                db.select(Message.request_id).where(
                    Message.last_activity_at < utcnow() - timedelta(days=90)
                )
            ).scalars()
        )
        assert 50 < len(old) < 300
        total = count(Message)
        bad = db.session.execute(
            db.select(func.count()).where(RawBody.outcome == "rejected")
        ).scalar()
        db.session.execute(
            db.update(RawBody)
            .where(RawBody.outcome == "rejected")
            .values(received_at=utcnow() - timedelta(days=100))
        )
        db.session.commit()

        batches = []
        totals = purge(parse_age("90d"), batch_size=40, progress=batches.append)
        assert totals["message"] == len(old) == sum(batches) and len(batches) > 1
        assert count(Message) == total - len(old)
        for model, column in (
            (Receipt, Receipt.request_id),
            (Reply, Reply.trace_request_id),
            (RawBody, RawBody.request_id),
            (Activity, Activity.request_id),
        ):
            assert (
                db.session.execute(
                    db.select(func.count()).select_from(model).where(column.in_(old))
                ).scalar()
                == 0
            )
        assert (
            db.session.execute(
                db.select(func.count()).where(RawBody.outcome == "rejected")
            ).scalar()
            == 0
            < bad
        )
        # Nothing left points at a deleted raw body.
        for model in (Receipt, Reply, Activity):
            orphans = db.session.execute(
                db.select(func.count())
                .select_from(model)
                .where(model.raw_id.is_not(None), model.raw_id.not_in(db.select(RawBody.id)))
            ).scalar()
            assert orphans == 0
        assert_contacts_consistent()
        assert rebuild().differences == 0


def test_parse_age():
    assert parse_age("90d") == timedelta(days=90)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("2w") == timedelta(weeks=2)
    with pytest.raises(ValueError):
        parse_age("90")


def test_commands(app):
    runner = app.test_cli_runner()
    seeded = runner.invoke(
        args=["seed", "--messages", "120", "--random-seed", "5", "--batch", "50"]
    )
    assert seeded.exit_code == 0, seeded.output
    assert "written: 120 message" in seeded.output
    checked = runner.invoke(args=["rebuild", "--check"])
    assert checked.exit_code == 0 and "no differences" in checked.output
    assert "messages checked: 120" in checked.output
    wrong = runner.invoke(args=["purge", "--older-than", "ninety"])
    assert wrong.exit_code == 2 and "--older-than" in wrong.output
    purged = runner.invoke(args=["purge", "--older-than", "90d"])
    assert purged.exit_code == 0, purged.output
    with app.app_context():
        left = count(Message)
    assert f"deleted: {120 - left} message" in purged.output


def planner_statistics(table: str) -> int:
    """How many rows of the query planner's statistics describe `table` (0: none)."""
    if db.session.get_bind().dialect.name == "postgresql":
        return db.session.execute(
            text("SELECT count(*) FROM pg_stats WHERE tablename = :t"), {"t": table}
        ).scalar()
    if not db.session.execute(
        text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
    ).scalar():
        return 0
    return db.session.execute(
        text("SELECT count(*) FROM sqlite_stat1 WHERE tbl = :t"), {"t": table}
    ).scalar()


def forget_planner_statistics() -> None:
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("DELETE FROM pg_statistic WHERE starelid = 'message'::regclass"))
    else:
        db.session.execute(text("ANALYZE sqlite_schema"))  # makes sqlite_stat1 if missing
        db.session.execute(text("DELETE FROM sqlite_stat1"))
    db.session.commit()


@pytest.mark.parametrize("command", ["seed", "import-sends", "rebuild", "purge", "recount"])
def test_bulk_commands_leave_the_planner_fresh_statistics(app, tmp_path, command):
    """After a bulk change the planner knows the data: the first page an operator opens is
    planned on the table as it is, not on the figures of an empty one."""
    runner = app.test_cli_runner()
    if command != "seed":
        seeded = runner.invoke(args=["seed", "--messages", "60", "--random-seed", "3"])
        assert seeded.exit_code == 0, seeded.output
    with app.app_context():
        forget_planner_statistics()
        assert planner_statistics("message") == 0
    sends = tmp_path / "sends.csv"
    sends.write_text("requestId,phone\nst-1,+10000000001\nst-2,+10000000002\n", encoding="utf-8")
    args = {
        "seed": ["seed", "--messages", "60", "--random-seed", "3"],
        "import-sends": ["import-sends", str(sends)],
        "rebuild": ["rebuild"],
        "purge": ["purge", "--older-than", "30d"],
        "recount": ["recount"],
    }[command]
    done = runner.invoke(args=args)
    assert done.exit_code == 0, done.output
    with app.app_context():
        assert planner_statistics("message") > 0
