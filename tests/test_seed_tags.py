"""seed --tags: campaign tags on seeded messages, as the sending system gives them, kept in
Message.tags and in message_tag alike, and exactly what a rebuild derives from the raw record."""

from collections import defaultdict
from datetime import timedelta

import pytest
from sqlalchemy import func

from app.core.services import services
from app.ops.rebuild import rebuild
from app.ops.seed import seed
from app.ops.seed_content import (
    CAMPAIGN_HOURS,
    OTP_TAG,
    SEGMENT_TAGS,
    CampaignPlan,
    campaign_tag,
)
from app.records.models import Message, MessageTag, RawBody, db


def zone(app):
    return services(app).sendtime_zone


def stored_tags() -> tuple[dict[str, frozenset], dict[str, frozenset]]:
    """Each message's tags by its column, and by its message_tag rows."""
    column = {
        rid: frozenset(tags.split(",")) if tags else frozenset()
        for rid, tags in db.session.execute(db.select(Message.request_id, Message.tags))
    }
    rows = defaultdict(set)
    for rid, tag in db.session.execute(db.select(MessageTag.request_id, MessageTag.tag)):
        rows[rid].add(tag)
    return column, {rid: frozenset(tags) for rid, tags in rows.items()}


def test_seeded_tags_agree_with_message_tag_and_the_raw_record(app):
    with app.app_context():
        written = seed(1500, random_seed=11, zone=zone(app), tags=6, batch_size=400)
        column, rows = stored_tags()
        assert written["message_tag"] == sum(len(t) for t in rows.values())
        assert (
            written["message_tag"]
            == db.session.execute(db.select(func.count()).select_from(MessageTag)).scalar()
        )
        # Every message's tags column is its message_tag rows: sorted, comma-separated.
        assert {rid: t for rid, t in column.items() if t} == rows
        assert all(
            tags == ",".join(sorted(tags.split(",")))
            for (tags,) in db.session.execute(
                db.select(Message.tags).where(Message.tags.is_not(None))
            )
        )
        every = [t for t in column.values()]
        campaigns = {campaign_tag(k) for k in range(6)}
        seen = set().union(*every)
        assert seen <= campaigns | {OTP_TAG, *SEGMENT_TAGS}
        assert len(seen & campaigns) >= 5 and OTP_TAG in seen
        # Some untagged (the steady flow, and messages never registered), a few with two tags.
        untagged = sum(1 for t in every if not t)
        two = sum(1 for t in every if len(t) == 2)
        assert 0.1 * len(every) < untagged < 0.6 * len(every)
        assert 0 < two < 0.15 * len(every)
        assert all(len(t) <= 2 for t in every)
        # Only registered messages carry tags, and their registration's raw body names them.
        assert (
            db.session.execute(
                db.select(func.count())
                .select_from(Message)
                .where(Message.tags.is_not(None), Message.registered_at.is_(None))
            ).scalar()
            == 0
        )
        report = rebuild(fix=False)
        assert report.differences == 0, report.lines()
        assert report.messages == 1500


def test_a_campaign_is_sent_within_its_window(app):
    with app.app_context():
        seed(1500, random_seed=5, zone=zone(app), tags=4)
        sent = defaultdict(list)
        for tag, at in db.session.execute(
            db.select(MessageTag.tag, Message.registered_at).join(
                Message, Message.request_id == MessageTag.request_id
            )
        ):
            sent[tag].append(at)
        window = timedelta(hours=max(CAMPAIGN_HOURS), minutes=2)  # + a minute of jitter
        for k in range(4):
            times = sent[campaign_tag(k)]
            if len(times) > 1:
                assert max(times) - min(times) <= window, campaign_tag(k)
        # The always-on tag runs through the whole period.
        otp = sent[OTP_TAG]
        assert max(otp) - min(otp) > timedelta(days=60)


def test_campaign_plan_hands_out_every_message_in_time_order():
    import random

    plan = CampaignPlan(200, 20_000, timedelta(days=30), random.Random(1))
    assert len(plan.slots) == 20_000
    offsets = [plan.at(i)[0] for i in range(20_000)]
    assert offsets == sorted(offsets) and offsets[-1] <= timedelta(days=30)
    campaigns = {t for i in range(20_000) for t in plan.at(i)[1]} - {OTP_TAG, *SEGMENT_TAGS}
    assert campaigns == {campaign_tag(k) for k in range(200)}


def test_without_tags_no_message_has_one(app):
    with app.app_context():
        written = seed(300, random_seed=7, zone=zone(app))
        assert "message_tag" not in written
        assert db.session.execute(db.select(func.count()).select_from(MessageTag)).scalar() == 0
        assert (
            db.session.execute(
                db.select(func.count()).select_from(Message).where(Message.tags.is_not(None))
            ).scalar()
            == 0
        )
        assert not any(
            b'"tags"' in body
            for (body,) in db.session.execute(
                db.select(RawBody.body).where(RawBody.endpoint == "register")
            )
        )


def test_seed_command_with_tags_then_the_checks(app):
    runner = app.test_cli_runner()
    seeded = runner.invoke(
        args=["seed", "--messages", "400", "--tags", "5", "--random-seed", "3", "--batch", "150"]
    )
    assert seeded.exit_code == 0, seeded.output
    assert "message_tag" in seeded.output
    checked = runner.invoke(args=["rebuild", "--check"])
    assert checked.exit_code == 0 and "no differences" in checked.output, checked.output
    recounted = runner.invoke(args=["recount", "--check"])
    assert recounted.exit_code == 0 and "no differences" in recounted.output, recounted.output
    with app.app_context():
        column, rows = stored_tags()
        assert {rid: t for rid, t in column.items() if t} == rows
        assert rows


@pytest.mark.parametrize("tags", ["-1", "10001"])
def test_seed_command_refuses_a_tag_count_out_of_range(app, tags):
    runner = app.test_cli_runner()
    refused = runner.invoke(args=["seed", "--messages", "10", "--tags", tags])
    assert refused.exit_code == 2 and "--tags" in refused.output
