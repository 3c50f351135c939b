import pytest

from app.records.models import Contact, Message, RawBody, db
from support.accounts import create_test_user, log_in
from support.bodies import post_json
from support.fixtures import fixture_bytes, fixture_json

RID = "f6a7d49946094857ae02812969a83056"
REG = {
    "requestId": RID,
    "phone": "79100000030",
    "text": "Your code is 1234",
    "appkey": "TexxxP6",
    "functionType": "text",
}


def dr(kind):
    return fixture_bytes(f"dr_{kind}")


def state(client):
    data = client.get(f"/api/messages/{RID}").get_json()
    data.pop("receipts"), data.pop("replies")
    for volatile in ("registeredAt", "lastActivityAt"):
        data.pop(volatile)
    data["statusTimes"] = sorted(data["statusTimes"])
    return data


def test_registration_creates_and_repeats(client, app):
    first = post_json(client, "/api/messages", REG)
    assert first.status_code == 201
    assert first.get_json() == {"requestId": RID, "outcome": "accepted"}
    again = post_json(client, "/api/messages", REG)
    assert again.status_code == 200 and again.get_json()["outcome"] == "duplicate"
    message = client.get(f"/api/messages/{RID}").get_json()
    assert message["phone"] == "79100000030"
    assert message["text"] == "Your code is 1234"
    assert message["status"] is None
    with app.app_context():
        contact = db.session.get(Contact, "79100000030")
        assert contact.messages_count == 1


@pytest.mark.parametrize("register_at", [0, 1, 2, 3])
def test_registration_before_or_after_receipts_same_record(client, app, tmp_path, register_at):
    events = [("dr", "success"), ("dr", "delivered"), ("dr", "seen")]
    events.insert(register_at, ("reg", None))
    for kind, status in events:
        if kind == "reg":
            assert post_json(client, "/api/messages", REG).status_code == 201
        else:
            assert (
                client.post(
                    "/webhooks/viber/dr", data=dr(status), content_type="application/json"
                ).status_code
                == 200
            )
    result = state(client)
    assert result["status"] == "seen"
    assert result["phone"] == "79100000030"
    assert result["text"] == "Your code is 1234"
    assert result["statusTimes"] == ["delivered", "seen", "success"]
    with app.app_context():
        assert db.session.get(Contact, "79100000030").messages_count == 1


def test_registered_phone_wins_over_reply_phone_and_counts_move(client, app):
    body = fixture_json("reply_text")
    body["traceRequestId"] = RID
    post_json(client, "/webhooks/viber/message", body)
    assert client.get(f"/api/messages/{RID}").get_json()["phone"] == "791xxxxx30"
    post_json(client, "/api/messages", REG)
    assert client.get(f"/api/messages/{RID}").get_json()["phone"] == "79100000030"
    with app.app_context():
        assert db.session.get(Contact, "791xxxxx30").messages_count == 0
        assert db.session.get(Contact, "791xxxxx30").replies_count == 1
        assert db.session.get(Contact, "79100000030").messages_count == 1


@pytest.mark.parametrize(
    "body,field",
    [
        ({"phone": "1"}, "requestId"),
        ({"requestId": RID}, "phone"),
        ({"requestId": RID, "phone": 79100000030}, "phone"),
        ({"requestId": RID, "phone": "1", "text": ["x"]}, "text"),
        ('"a text, not an object"', "body"),
    ],
)
def test_bad_registration_is_refused_and_kept(client, app, body, field):
    response = post_json(client, "/api/messages", body)
    assert response.status_code == 422
    assert response.get_json()["field"] == field
    with app.app_context():
        raw = db.session.execute(db.select(RawBody)).scalar_one()
        assert raw.endpoint == "register" and raw.outcome == "rejected"
        assert db.session.execute(db.select(db.func.count(Message.request_id))).scalar() == 0


def test_reprocess_applies_bodies_rejected_under_old_configuration(app_config, tmp_path):
    """A sendTime zone that was misconfigured rejects nothing, but a too-strict contract would:
    simulate a fix by storing a body the validator now accepts and reprocessing it."""
    from app import create_app
    from app.records.models import RawBody

    app = create_app(app_config)
    with app.app_context():
        db.create_all()
    create_test_user(app)
    client = log_in(app, app.test_client())
    # Rejected for its content type; the operator decides it is genuine and reprocesses it.
    response = client.post("/webhooks/viber/dr", data=dr("seen"), content_type="text/plain")
    assert response.status_code == 415
    with app.app_context():
        raw = db.session.execute(db.select(RawBody)).scalar_one()
        raw.content_type = "application/json"
        db.session.commit()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["reprocess"])
    assert result.exit_code == 0, result.output
    assert "reprocessed 1: 1 accepted" in result.output
    assert client.get(f"/api/messages/{RID}").get_json()["status"] == "seen"
    with app.app_context():
        raw = db.session.execute(db.select(RawBody)).scalar_one()
        assert raw.outcome == "accepted" and raw.reprocessed_at is not None
    assert "nothing to do" in runner.invoke(args=["reprocess"]).output


def test_reprocess_keeps_invalid_bodies_rejected(client, app):
    post_json(client, "/webhooks/viber/dr", {"status": "read"})
    result = app.test_cli_runner().invoke(args=["reprocess"])
    assert "1 rejected" in result.output
    with app.app_context():
        assert db.session.execute(db.select(RawBody)).scalar_one().outcome == "rejected"


def test_sendtime_zone_is_configurable(app_config):
    from app import create_app

    app = create_app({**app_config, "SENDTIME_TZ": "UTC"})
    with app.app_context():
        db.create_all()
    create_test_user(app)
    client = log_in(app, app.test_client())
    client.post("/webhooks/viber/dr", data=dr("seen"), content_type="application/json")
    assert client.get(f"/api/messages/{RID}").get_json()["sendTimeUtc"] == "2023-07-13T15:12:11Z"
