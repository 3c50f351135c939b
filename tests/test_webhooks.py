import json

import pytest

from app.records.models import Activity, Message, RawBody, Receipt, Reply, db
from support.bodies import encoded, post_json, receipt, reply
from support.fixtures import fixture_bytes, fixture_json

DR = "/webhooks/viber/dr"
REPLY = "/webhooks/viber/message"
RID = "f6a7d49946094857ae02812969a83056"
PHONE = "79100000030"


def read(client, rid=RID):
    response = client.get(f"/api/messages/{rid}")
    assert response.status_code == 200
    return response.get_json()


def raw_rows(app):
    with app.app_context():
        return db.session.execute(db.select(RawBody).order_by(RawBody.id)).scalars().all()


@pytest.mark.parametrize(
    "status,code",
    [("success", 0), ("failed", 11000), ("delivered", 11001), ("seen", 11002), ("expired", 11003)],
)
def test_documented_receipt_examples_verbatim(client, app, status, code):
    body = fixture_bytes(f"dr_{status}")
    response = client.post(DR, data=body, content_type="application/json")
    assert response.status_code == 200
    assert response.data == b"success"
    message = read(client)
    assert message["status"] == status
    assert message["code"] == code
    assert message["sendTime"] == "2023-07-13 15:12:11"
    # Default zone UTC+08:00: 15:12:11 there is 07:12:11 UTC.
    assert message["sendTimeUtc"] == "2023-07-13T07:12:11Z"
    assert list(message["statusTimes"]) == [status]
    assert len(message["receipts"]) == 1
    [raw] = raw_rows(app)
    assert raw.body == body and raw.endpoint == "dr" and raw.outcome == "accepted"
    assert raw.content_type == "application/json"


def test_success_example_carries_cost(client):
    client.post(DR, data=fixture_bytes("dr_success"), content_type="application/json")
    assert read(client)["cost"] == {
        "currency": "USD",
        "localPrice": 29.89465,
        "originalPrice": 4.1234,
        "rateType": "Transactional",
    }


def test_cost_accepted_on_delivered_and_counted_once(client):
    cost = {"currency": "USD", "localPrice": 1.5, "originalPrice": 0.2, "rateType": "Promotional"}
    post_json(client, DR, receipt(RID, "delivered", cost=cost))
    post_json(client, DR, receipt(RID, "seen", cost={**cost, "localPrice": 99}))
    assert read(client)["cost"] == cost


def test_unknown_extra_fields_are_kept(client, app):
    body = receipt(RID, "delivered", extraField={"nested": [1, 2]}, channel="viber")
    assert post_json(client, DR, body).status_code == 200
    [raw] = raw_rows(app)
    assert json.loads(raw.body)["extraField"] == {"nested": [1, 2]}


@pytest.mark.parametrize(
    "order",
    [
        ["success", "delivered", "seen"],
        ["seen", "delivered", "success"],
        ["delivered", "seen", "success", "delivered", "delivered"],
        ["seen", "success", "seen", "delivered"],
    ],
)
def test_order_and_duplicates_end_seen(client, order):
    for status in order:
        assert post_json(client, DR, receipt(RID, status)).status_code == 200
    message = read(client)
    assert message["status"] == "seen"
    assert set(message["statusTimes"]) == {"success", "delivered", "seen"}
    assert len(message["receipts"]) == 3
    assert message["anomalies"] == []


def test_late_success_never_moves_back(client):
    post_json(client, DR, receipt(RID, "delivered"))
    post_json(client, DR, receipt(RID, "success"))
    assert read(client)["status"] == "delivered"


def test_repeated_body_changes_nothing_and_is_answered_success(client, app):
    body = fixture_bytes("dr_delivered")
    first = client.post(DR, data=body, content_type="application/json")
    before = read(client)
    again = client.post(DR, data=body, content_type="application/json")
    assert first.data == again.data == b"success"
    after = read(client)
    assert after["status"] == before["status"] == "delivered"
    assert after["statusTimes"] == before["statusTimes"]
    assert len(after["receipts"]) == 1
    assert after["receipts"][0]["timesReceived"] == 2
    assert [r.outcome for r in raw_rows(app)] == ["accepted", "duplicate"]
    with app.app_context():
        assert db.session.execute(db.select(db.func.count(Activity.id))).scalar() == 1


def test_same_content_with_other_spacing_is_the_same_push(client):
    compact = json.dumps(fixture_json("dr_delivered"), separators=(",", ":"))
    client.post(DR, data=fixture_bytes("dr_delivered"), content_type="application/json")
    client.post(DR, data=compact, content_type="application/json")
    assert len(read(client)["receipts"]) == 1


@pytest.mark.parametrize(
    "statuses,status,anomaly",
    [
        (["delivered", "expired"], "delivered", "expired beside delivered"),
        (["failed", "seen"], "seen", "failed beside seen"),
        (["expired", "failed"], "expired", "failed beside expired"),
    ],
)
def test_contradictions_are_kept_and_flagged(client, statuses, status, anomaly):
    for s in statuses:
        post_json(client, DR, receipt(RID, s))
    message = read(client)
    assert message["status"] == status
    assert message["anomalies"] == [anomaly]
    assert len(message["receipts"]) == 2


def test_failed_with_code_from_table(client):
    post_json(client, DR, receipt(RID, "failed", code=1102, message="Insufficient balance"))
    message = read(client)
    assert message["status"] == "failed"
    assert message["code"] == 1102
    assert message["codeMessage"] == "Insufficient balance"
    assert "recharge" in message["solution"]


def test_unknown_code_is_shown_as_unknown(client):
    assert post_json(client, DR, receipt(RID, "failed", code=777)).status_code == 200
    message = read(client)
    assert message["code"] == 777 and message["codeMessage"] == "Unknown code"


def test_reply_examples_verbatim_link_and_teach_phone(client, app):
    rid = "ae2c8ff7a4ee408398cf220e3fc1c199"
    post_json(client, DR, receipt(rid, "delivered"))
    assert read(client, rid)["phone"] is None
    for name in ("reply_text", "reply_media"):
        response = client.post(REPLY, data=fixture_bytes(name), content_type="application/json")
        assert response.status_code == 200 and response.data == b"success"
    message = read(client, rid)
    assert message["phone"] == "791xxxxx30"
    assert [r["message"] for r in message["replies"]] == [
        {"text": "text test"},
        {"media": "https:media-link", "fileName": "xxxx.jpeg"},
    ]
    assert message["status"] == "delivered"


def test_reply_before_any_receipt_is_kept_and_phone_learned(client, app):
    rid = "ae2c8ff7a4ee408398cf220e3fc1c199"
    assert (
        client.post(
            REPLY, data=fixture_bytes("reply_text"), content_type="application/json"
        ).status_code
        == 200
    )
    with app.app_context():
        stored = db.session.execute(db.select(Reply)).scalar_one()
        assert stored.phone == "791xxxxx30" and stored.trace_request_id == rid
    post_json(client, DR, receipt(rid, "seen"))
    message = read(client, rid)
    assert message["phone"] == "791xxxxx30"
    assert message["status"] == "seen"
    assert len(message["replies"]) == 1


def test_repeated_reply_is_stored_once(client, app):
    for _ in range(3):
        assert (
            client.post(
                REPLY, data=fixture_bytes("reply_text"), content_type="application/json"
            ).data
            == b"success"
        )
    with app.app_context():
        replies = db.session.execute(db.select(Reply)).scalars().all()
        assert len(replies) == 1 and replies[0].times_received == 3


BAD_RECEIPTS = [
    # (name, body bytes, content type, status, field)
    ("unparsable", b'{"status": "seen",', "application/json", 400, "body"),
    ("empty body", b"", "application/json", 400, "body"),
    ("array", b'[{"status": "seen"}]', "application/json", 422, "body"),
    ("not utf-8", b'{"status": "\xff\xfe"}', "application/json", 400, "body"),
    ("wrong content type", fixture_bytes("dr_seen"), "text/plain", 415, "Content-Type"),
    (
        "unknown status",
        encoded({**receipt(RID, "seen"), "status": "read"}),
        "application/json",
        422,
        "status",
    ),
    (
        "missing requestId",
        encoded({k: v for k, v in receipt(RID, "seen").items() if k != "requestId"}),
        "application/json",
        422,
        "requestId",
    ),
    (
        "empty requestId",
        encoded(receipt("", "seen")),
        "application/json",
        422,
        "requestId",
    ),
    (
        "code as text that is not a number",
        encoded(receipt(RID, "seen", code="11002x")),
        "application/json",
        422,
        "code",
    ),
    (
        "code as float",
        encoded(receipt(RID, "seen", code=11002.5)),
        "application/json",
        422,
        "code",
    ),
    (
        "requestId as number",
        encoded(receipt(12345, "seen")),
        "application/json",
        422,
        "requestId",
    ),
    (
        "message as number",
        encoded(receipt(RID, "seen", message=11002)),
        "application/json",
        422,
        "message",
    ),
    (
        "bad sendTime",
        encoded(receipt(RID, "seen", send_time="13/07/2023 15:12")),
        "application/json",
        422,
        "sendTime",
    ),
    (
        "impossible sendTime",
        encoded(receipt(RID, "seen", send_time="2023-02-30 15:12:11")),
        "application/json",
        422,
        "sendTime",
    ),
    (
        "cost not object",
        encoded(receipt(RID, "seen", cost="1 USD")),
        "application/json",
        422,
        "cost",
    ),
    (
        "cost price as text with a decimal comma",
        encoded(receipt(RID, "seen", cost={"localPrice": "1,0"})),
        "application/json",
        422,
        "cost.localPrice",
    ),
    (
        "NaN",
        b'{"status":"seen","requestId":"x","code":NaN,"message":"m","sendTime":"2023-07-13 15:12:11"}',
        "application/json",
        400,
        "body",
    ),
]


@pytest.mark.parametrize(
    "name,body,content_type,status,field", BAD_RECEIPTS, ids=[b[0] for b in BAD_RECEIPTS]
)
def test_bad_receipts_answered_and_kept(client, app, name, body, content_type, status, field):
    response = client.post(DR, data=body, content_type=content_type)
    assert response.status_code == status
    error = response.get_json()
    assert error["field"] == field
    assert error["reason"]
    [raw] = raw_rows(app)
    assert raw.body == body
    assert raw.outcome == "rejected" and raw.http_status == status
    assert field in raw.reason
    with app.app_context():
        assert db.session.execute(db.select(db.func.count(Message.request_id))).scalar() == 0
        assert db.session.execute(db.select(db.func.count(Receipt.id))).scalar() == 0


BAD_REPLIES = [
    (
        "missing phone",
        {k: v for k, v in reply(RID, PHONE, "hi").items() if k != "phone"},
        422,
        "phone",
    ),
    ("phone as number", reply(RID, 791000030, "hi"), 422, "phone"),
    (
        "missing traceRequestId",
        {k: v for k, v in reply(RID, PHONE, "hi").items() if k != "traceRequestId"},
        422,
        "traceRequestId",
    ),
    ("message as string", {**reply(RID, PHONE), "message": "hello"}, 422, "message"),
    ("message empty object", reply(RID, PHONE), 422, "message"),
    ("text as number", reply(RID, PHONE, 5), 422, "message.text"),
    (
        "fileName as list",
        reply(RID, PHONE, media="https://x/y.png", file_name=["a"]),
        422,
        "message.fileName",
    ),
    ("bad sendTime", reply(RID, PHONE, "hi", send_time="yesterday"), 422, "sendTime"),
    ("NUL in text", reply(RID, PHONE, "a\u0000b"), 422, "message.text"),
]


@pytest.mark.parametrize("name,body,status,field", BAD_REPLIES, ids=[b[0] for b in BAD_REPLIES])
def test_bad_replies_answered_and_kept(client, app, name, body, status, field):
    response = post_json(client, REPLY, body)
    assert response.status_code == status
    assert response.get_json()["field"] == field
    [raw] = raw_rows(app)
    assert raw.outcome == "rejected" and json.loads(raw.body) == body
    with app.app_context():
        assert db.session.execute(db.select(db.func.count(Reply.id))).scalar() == 0


def test_unknown_message_is_404(client):
    response = client.get("/api/messages/nope")
    assert response.status_code == 404
    assert response.get_json()["field"] == "requestId"


def test_real_http_round_trip(live_server, api_token):
    import urllib.request

    req = urllib.request.Request(
        live_server.url + DR,
        data=fixture_bytes("dr_seen"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as response:
        assert response.status == 200 and response.read() == b"success"
    read = urllib.request.Request(
        f"{live_server.url}/api/messages/{RID}", headers={"Authorization": f"Bearer {api_token}"}
    )
    with urllib.request.urlopen(read) as response:
        assert json.loads(response.read())["status"] == "seen"


FAILING_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER fail_receipts BEFORE INSERT ON receipt "
        "BEGIN SELECT RAISE(ABORT, 'simulated storage failure'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION fail_receipts() RETURNS trigger AS $$ "
        "BEGIN RAISE EXCEPTION 'simulated storage failure'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER fail_receipts BEFORE INSERT ON receipt "
        "FOR EACH ROW EXECUTE FUNCTION fail_receipts()",
    ],
}


def test_failed_commit_keeps_the_body_and_reprocess_applies_it(client, app):
    """A database failure while applying a receipt answers 503 (so NXCLOUD retries) and still
    keeps the body; once the database is healthy again, reprocess applies it."""
    with app.app_context():
        for statement in FAILING_TRIGGER[db.engine.dialect.name]:
            db.session.execute(db.text(statement))
        db.session.commit()
    response = client.post(DR, data=fixture_bytes("dr_seen"), content_type="application/json")
    assert response.status_code == 503
    [raw] = raw_rows(app)
    assert raw.body == fixture_bytes("dr_seen") and raw.outcome == "rejected"
    assert "not applied" in raw.reason
    assert client.get(f"/api/messages/{RID}").status_code == 404
    with app.app_context():
        db.session.execute(
            db.text(
                "DROP TRIGGER fail_receipts"
                + (" ON receipt" if db.engine.dialect.name == "postgresql" else "")
            )
        )
        db.session.commit()
    assert "1 accepted" in app.test_cli_runner().invoke(args=["reprocess"]).output
    assert read(client)["status"] == "seen"
