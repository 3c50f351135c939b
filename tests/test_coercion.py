"""Bodies that carry a valid requestId and status (or reply content) but put a field in a form
NXCLOUD does not document are accepted when they can be read without guessing: a code or a
price as a text of digits, a receipt without `message`, a sendTime in ISO 8601 or as an epoch
number. Each coercion is an anomaly of its message; what cannot be read is refused as before."""

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.payloads import (
    CODE_AS_TEXT,
    MESSAGE_FROM_TABLE,
    PRICE_AS_TEXT,
    SEND_TIME_EPOCH,
    SEND_TIME_EPOCH_MS,
    SEND_TIME_ISO,
    SEND_TIME_RE,
    Invalid,
    parse_receipt,
    parse_reply,
    parse_send_time,
    parse_zone,
)
from app.core.times import utcnow
from app.dashboard.filters import MessageFilter
from app.ops.maintenance import recount_differences
from app.records.models import Message, RawBody, Receipt, Reply, db
from support.bodies import DR, REPLY, encoded, post_json, receipt, reply

RID = "c0e1c3d0a0b04c5e9a8a3f2b1d4e5f60"
PHONE = "79100000030"
ZONE = parse_zone("UTC+08:00")  # the default SENDTIME_ZONE
ROW_RE = re.compile(r'<tr id="msg-([^"]+)" data-status=')


def without(body: dict, *names: str) -> dict:
    return {k: v for k, v in body.items() if k not in names}


def read(client, rid=RID) -> dict:
    response = client.get(f"/api/messages/{rid}")
    assert response.status_code == 200
    return response.get_json()


def ids(client, query: str) -> list[str]:
    response = client.get("/" + query)
    assert response.status_code == 200, response.get_data(as_text=True)[:1000]
    return ROW_RE.findall(response.get_data(as_text=True))


def assert_no_difference(app):
    """rebuild --check derives every message, receipt and reply as stored, and recount --check
    finds the counters and rollups equal to a recount."""
    runner = app.test_cli_runner()
    rebuilt = runner.invoke(args=["rebuild", "--check"])
    assert rebuilt.exit_code == 0 and "no differences" in rebuilt.output, rebuilt.output
    recounted = runner.invoke(args=["recount", "--check"])
    assert recounted.exit_code == 0 and "no differences" in recounted.output, recounted.output
    with app.app_context():
        assert recount_differences() == []


ACCEPTED = [
    (
        "code as text",
        receipt(RID, "delivered", code="11001"),
        {"status": "delivered", "code": 11001, "message": "Viber message has delivered"},
        [CODE_AS_TEXT],
    ),
    (
        "code as text with leading zeros",
        receipt(RID, "failed", code="09001"),
        {"status": "failed", "code": 9001},
        [CODE_AS_TEXT],
    ),
    (
        "message missing",
        without(receipt(RID, "seen"), "message"),
        {"status": "seen", "code": 11002, "message": "Viber message has seen"},
        [MESSAGE_FROM_TABLE],
    ),
    (
        "message null",
        {**receipt(RID, "expired"), "message": None},
        {"status": "expired", "code": 11003, "message": "Viber message has expired"},
        [MESSAGE_FROM_TABLE],
    ),
    (
        "message missing, code not in the table",
        without(receipt(RID, "failed", code=4242), "message"),
        {"status": "failed", "code": 4242, "message": "Unknown code"},
        [MESSAGE_FROM_TABLE],
    ),
    (
        "sendTime in ISO 8601 without a zone: NXCLOUD's zone",
        receipt(RID, "delivered", send_time="2023-07-13T15:12:11"),
        {"sendTime": "2023-07-13T15:12:11", "sendTimeUtc": "2023-07-13T07:12:11Z"},
        [SEND_TIME_ISO],
    ),
    (
        "sendTime in ISO 8601 in UTC",
        receipt(RID, "delivered", send_time="2023-07-13T07:12:11Z"),
        {"sendTimeUtc": "2023-07-13T07:12:11Z"},
        [SEND_TIME_ISO],
    ),
    (
        "sendTime in ISO 8601 with an offset and a fraction",
        receipt(RID, "delivered", send_time="2023-07-13T09:12:11.250+02:00"),
        {"sendTimeUtc": "2023-07-13T07:12:11.250000Z"},
        [SEND_TIME_ISO],
    ),
    (
        "sendTime as epoch seconds",
        receipt(RID, "seen", send_time=1689232331),
        {"sendTime": "1689232331", "sendTimeUtc": "2023-07-13T07:12:11Z"},
        [SEND_TIME_EPOCH],
    ),
    (
        "sendTime as epoch milliseconds",
        receipt(RID, "seen", send_time=1689232331000),
        {"sendTime": "1689232331000", "sendTimeUtc": "2023-07-13T07:12:11Z"},
        [SEND_TIME_EPOCH_MS],
    ),
    (
        "prices as text",
        receipt(
            RID,
            "success",
            cost={"currency": "USD", "localPrice": "29.89465", "originalPrice": "4.1234"},
        ),
        {
            "status": "success",
            "cost": {
                "currency": "USD",
                "localPrice": 29.89465,
                "originalPrice": 4.1234,
                "rateType": None,
            },
        },
        [PRICE_AS_TEXT],
    ),
    (
        "everything at once",
        without(
            receipt(
                RID,
                "delivered",
                code="11001",
                send_time="2023-07-13T15:12:11",
                cost={"currency": "USD", "localPrice": ".5", "originalPrice": "-0.25"},
            ),
            "message",
        ),
        {
            "status": "delivered",
            "code": 11001,
            "message": "Viber message has delivered",
            "sendTimeUtc": "2023-07-13T07:12:11Z",
            "cost": {
                "currency": "USD",
                "localPrice": 0.5,
                "originalPrice": -0.25,
                "rateType": None,
            },
        },
        [CODE_AS_TEXT, MESSAGE_FROM_TABLE, SEND_TIME_ISO, PRICE_AS_TEXT],
    ),
]


@pytest.mark.parametrize("name,body,expected,anomalies", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_a_readable_receipt_is_accepted_with_its_anomaly(
    client, app, name, body, expected, anomalies
):
    response = post_json(client, DR, body)
    assert response.status_code == 200 and response.data == b"success"
    message = read(client)
    assert {k: message[k] for k in expected} == expected
    assert message["anomalies"] == anomalies
    [stored] = message["receipts"]
    assert stored["code"] == message["code"] and stored["message"] == message["message"]
    with app.app_context():
        row = db.session.get(Message, RID)
        assert row.anomaly is True and row.anomalies == "; ".join(anomalies)
        assert db.session.execute(db.select(Receipt.coerced)).scalar_one() == "; ".join(anomalies)
        raw = db.session.execute(db.select(RawBody)).scalar_one()
        assert raw.outcome == "accepted" and raw.http_status == 200
        assert raw.body == json.dumps(body).encode()  # kept verbatim
    assert_no_difference(app)


def test_the_same_receipt_again_is_a_duplicate_and_changes_nothing(client, app):
    body = receipt(RID, "seen", code="11002", send_time=1689232331)
    assert post_json(client, DR, body).status_code == 200
    before = read(client)
    assert post_json(client, DR, body).status_code == 200
    after = read(client)
    assert after["receipts"][0]["timesReceived"] == 2
    assert {k: v for k, v in after.items() if k != "receipts"} == {
        k: v for k, v in before.items() if k != "receipts"
    }
    with app.app_context():
        raws = db.session.execute(db.select(RawBody.outcome).order_by(RawBody.id)).scalars()
        assert list(raws) == ["accepted", "duplicate"]


def test_coerced_receipts_fold_with_documented_ones(client, app):
    """A coerced receipt counts for the status like any other; a later documented receipt does
    not clear the anomaly (the set of receipts still holds the coerced one)."""
    assert post_json(client, DR, receipt(RID, "success", cost=True)).status_code == 200
    assert post_json(client, DR, receipt(RID, "delivered", code="11001")).status_code == 200
    assert read(client)["status"] == "delivered"
    assert post_json(client, DR, without(receipt(RID, "seen"), "message")).status_code == 200
    assert post_json(client, DR, receipt(RID, "failed")).status_code == 200
    message = read(client)
    assert message["status"] == "seen" and message["code"] == 11002
    assert message["anomalies"] == ["failed beside seen", CODE_AS_TEXT, MESSAGE_FROM_TABLE]
    assert set(message["statusTimes"]) == {"success", "delivered", "seen", "failed"}
    assert_no_difference(app)


@pytest.mark.parametrize(
    "send_time,utc,anomaly",
    [
        ("2023-07-17T14:40:50", "2023-07-17T06:40:50Z", SEND_TIME_ISO),
        ("2023-07-17 06:40:50Z", "2023-07-17T06:40:50Z", SEND_TIME_ISO),
        (1689576050, "2023-07-17T06:40:50Z", SEND_TIME_EPOCH),
        (1689576050500, "2023-07-17T06:40:50.500000Z", SEND_TIME_EPOCH_MS),
    ],
)
def test_a_reply_with_its_sendtime_coerced_is_accepted_with_its_anomaly(
    client, app, send_time, utc, anomaly
):
    assert post_json(client, DR, receipt(RID, "delivered")).status_code == 200
    response = post_json(client, REPLY, reply(RID, PHONE, "thanks", send_time=send_time))
    assert response.status_code == 200
    message = read(client)
    assert message["status"] == "delivered" and message["phone"] == PHONE
    assert message["anomalies"] == [anomaly]
    [answer] = message["replies"]
    assert answer["message"] == {"text": "thanks"} and answer["sendTimeUtc"] == utc
    assert answer["sendTime"] == str(send_time)
    with app.app_context():
        assert db.session.execute(db.select(Reply.coerced)).scalar_one() == anomaly
        assert db.session.get(Message, RID).anomaly is True
    assert_no_difference(app)


REFUSED_RECEIPTS = [
    ("code text with a letter", receipt(RID, code="11001x"), "code"),
    ("code empty text", receipt(RID, code=""), "code"),
    ("code null", receipt(RID, code=None) | {"code": None}, "code"),
    ("code missing", without(receipt(RID), "code"), "code"),
    ("code text with a sign", receipt(RID, code="-11001"), "code"),
    ("code text with spaces", receipt(RID, code=" 11001"), "code"),
    ("code text with an exponent", receipt(RID, code="1e3"), "code"),
    ("code text with a decimal point", receipt(RID, code="11001.0"), "code"),
    ("code text out of range", receipt(RID, code="99999999999"), "code"),
    ("code as object", receipt(RID, code={"value": 11001}), "code"),
    ("message as number", receipt(RID, message=5), "message"),
    ("message as object", receipt(RID) | {"message": {"text": "x"}}, "message"),
    ("price with a decimal comma", receipt(RID, cost={"localPrice": "1,5"}), "cost.localPrice"),
    ("price with an exponent", receipt(RID, cost={"localPrice": "1e5"}), "cost.localPrice"),
    ("price as words", receipt(RID, cost={"originalPrice": "abc"}), "cost.originalPrice"),
    ("price empty text", receipt(RID, cost={"localPrice": ""}), "cost.localPrice"),
    ("price with spaces", receipt(RID, cost={"localPrice": " 1.5"}), "cost.localPrice"),
    ("price with a currency", receipt(RID, cost={"localPrice": "$1.5"}), "cost.localPrice"),
    ("price text out of range", receipt(RID, cost={"localPrice": "1" * 13}), "cost.localPrice"),
    ("sendTime in words", receipt(RID, send_time="yesterday"), "sendTime"),
    ("sendTime empty", receipt(RID, send_time=""), "sendTime"),
    ("sendTime null", receipt(RID) | {"sendTime": None}, "sendTime"),
    ("sendTime year 0", receipt(RID, send_time="0000-07-13T15:12:11"), "sendTime"),
    ("sendTime year 10000", receipt(RID, send_time="10000-07-13T15:12:11"), "sendTime"),
    ("sendTime year 1 east of UTC", receipt(RID, send_time="0001-01-01T00:00:00"), "sendTime"),
    ("sendTime February 30", receipt(RID, send_time="2023-02-30T10:00:00Z"), "sendTime"),
    ("sendTime hour 24", receipt(RID, send_time="2023-07-13T24:00:00"), "sendTime"),
    ("sendTime date only", receipt(RID, send_time="2023-07-13"), "sendTime"),
    ("sendTime without seconds", receipt(RID, send_time="2023-07-13T15:12"), "sendTime"),
    ("sendTime basic format", receipt(RID, send_time="20230713T151211"), "sendTime"),
    (
        "sendTime offset out of range",
        receipt(RID, send_time="2023-07-13T15:12:11+25:00"),
        "sendTime",
    ),
    ("sendTime digits as text", receipt(RID, send_time="1689232331"), "sendTime"),
    ("sendTime epoch 10^30", receipt(RID, send_time=10**30), "sendTime"),
    ("sendTime epoch 10^14 ms", receipt(RID, send_time=10**14), "sendTime"),
    ("sendTime negative epoch", receipt(RID, send_time=-1), "sendTime"),
    ("sendTime boolean", receipt(RID, send_time=True), "sendTime"),
    (
        "sendTime longer than 32",
        receipt(RID, send_time="2023-07-13T15:12:11.123456789+08:00"),
        "sendTime",
    ),
]


@pytest.mark.parametrize("name,body,field", REFUSED_RECEIPTS, ids=[r[0] for r in REFUSED_RECEIPTS])
def test_what_cannot_be_read_is_still_refused(client, app, name, body, field):
    response = post_json(client, DR, body)
    assert response.status_code == 422
    error = response.get_json()
    assert error["field"] == field and error["reason"]
    with app.app_context():
        raw = db.session.execute(db.select(RawBody)).scalar_one()
        assert raw.outcome == "rejected" and raw.http_status == 422 and field in raw.reason
        assert raw.body == json.dumps(body).encode()
        assert db.session.execute(db.select(db.func.count(Message.request_id))).scalar() == 0


REFUSED_REPLIES = [
    ("sendTime in words", reply(RID, PHONE, "hi", send_time="yesterday")),
    ("sendTime year 0", reply(RID, PHONE, "hi", send_time="0000-01-01T00:00:00Z")),
    ("sendTime epoch 10^30", reply(RID, PHONE, "hi", send_time=10**30)),
    ("sendTime digits as text", reply(RID, PHONE, "hi", send_time="1689575450")),
    ("sendTime as object", reply(RID, PHONE, "hi", send_time={"epoch": 1689575450})),
]


@pytest.mark.parametrize("name,body", REFUSED_REPLIES, ids=[r[0] for r in REFUSED_REPLIES])
def test_a_reply_whose_sendtime_cannot_be_read_is_still_refused(client, app, name, body):
    response = post_json(client, REPLY, body)
    assert response.status_code == 422 and response.get_json()["field"] == "sendTime"
    with app.app_context():
        assert db.session.execute(db.select(RawBody.outcome)).scalar_one() == "rejected"


@pytest.fixture
def flagged(client, app):
    """Five messages: documented, contradicting, and three read by coercion."""
    bodies = [
        receipt("m1-plain", "delivered"),
        receipt("m2-contradiction", "delivered"),
        receipt("m2-contradiction", "expired"),
        receipt("m3-code-text", "seen", code="11002"),
        receipt("m4-iso", "delivered", send_time="2023-07-13T15:12:11+08:00"),
        receipt("m5-both", "delivered"),
        receipt("m5-both", "failed"),
        reply("m5-both", PHONE, "hi", send_time=1689575450),
    ]
    for body in bodies:
        path = REPLY if "traceRequestId" in body else DR
        assert post_json(client, path, body).status_code == 200
    return client


@pytest.mark.parametrize(
    "query,expected",
    [
        ("", {"m1-plain", "m2-contradiction", "m3-code-text", "m4-iso", "m5-both"}),
        ("?anomaly=1", {"m2-contradiction", "m3-code-text", "m4-iso", "m5-both"}),
        ("?anomaly=coerced", {"m3-code-text", "m4-iso", "m5-both"}),
        ("?anomaly=COERCED&status=delivered", {"m4-iso", "m5-both"}),
        ("?anomaly=contradiction", {"m2-contradiction", "m5-both"}),
        ("?anomaly=sendTime+in+ISO+8601", {"m4-iso"}),
        ("?anomaly=epoch", {"m5-both"}),
        ("?anomaly=code+given+as+text", {"m3-code-text"}),
        ("?anomaly=no+such+anomaly", set()),
        ("?anomaly=100%25", set()),
        ("?anomaly=0", {"m1-plain", "m2-contradiction", "m3-code-text", "m4-iso", "m5-both"}),
    ],
)
def test_the_messages_page_filters_by_anomaly_kind(flagged, app, query, expected):
    assert set(ids(flagged, query)) == expected
    if query:
        args = dict(pair.split("=") for pair in query[1:].split("&"))
        args = {k: v.replace("+", " ").replace("%25", "%") for k, v in args.items()}
        flt = MessageFilter.from_args(args)
        with app.app_context():
            matched = {
                m.request_id
                for m in db.session.execute(db.select(Message)).scalars()
                if flt.matches(m)
            }
            queried = set(db.session.execute(flt.query()).scalars().all())
            assert matched == {m.request_id for m in queried} == expected


def test_an_anomaly_kind_is_a_removable_chip_and_round_trips(flagged):
    flt = MessageFilter.from_args({"anomaly": "coerced"})
    assert flt.anomaly and flt.anomaly_kind == "coerced" and not flt.by_key_only
    assert flt.to_args() == {"anomaly": "coerced"}
    [(label, without_it)] = flt.chips()
    assert label == "anomaly: coerced" and without_it.is_empty
    assert MessageFilter.from_args({"anomaly": "yes"}) == MessageFilter(anomaly=True)
    html = flagged.get("/?anomaly=coerced").get_data(as_text=True)
    assert "anomaly: coerced" in html
    # The filter form sends the kind again, so applying it keeps the kind.
    assert 'name="anomaly" value="coerced" checked' in html
    assert flagged.get("/export.csv?anomaly=coerced").status_code == 200


def store_as_rejected_before(app, body: bytes, reason: str, endpoint: str = "dr") -> int:
    """A body as the webhook kept it before coercions were read: rejected, 422, its reason."""
    with app.app_context():
        raw = RawBody(
            endpoint=endpoint,
            received_at=utcnow() - timedelta(minutes=5),
            content_type="application/json",
            body=body,
            headers="{}",
            remote_addr="127.0.0.1",
            outcome="rejected",
            http_status=422,
            reason=reason,
            request_id=RID,
        )
        db.session.add(raw)
        db.session.commit()
        return raw.id


def test_reprocess_rescues_a_body_refused_before(client, app):
    first = store_as_rejected_before(
        app,
        encoded(receipt(RID, "delivered", code="11001")),
        "code: must be an integer, got string",
    )
    second = store_as_rejected_before(
        app,
        encoded(without(receipt(RID, "seen", send_time="2024-05-01T02:00:00Z"), "message")),
        "message: is required",
    )
    answer = store_as_rejected_before(
        app,
        encoded(reply(RID, PHONE, "ok", send_time=1714528800)),
        'sendTime: must look like "YYYY-MM-DD HH:MM:SS"',
        endpoint="message",
    )
    assert client.get(f"/api/messages/{RID}").status_code == 404
    output = app.test_cli_runner().invoke(args=["reprocess", "--id", str(first)]).output
    assert "1 accepted" in output
    assert read(client)["status"] == "delivered"
    assert read(client)["anomalies"] == [CODE_AS_TEXT]
    # The Reprocess button on /rejected applies the same rules.
    done = client.post(f"/rejected/{second}/reprocess")
    assert done.status_code == 303
    assert f"Body #{second} reprocessed: accepted" in client.get(done.headers["Location"]).get_data(
        as_text=True
    )
    assert "1 accepted" in app.test_cli_runner().invoke(args=["reprocess"]).output
    message = read(client)
    assert message["status"] == "seen" and message["message"] == "Viber message has seen"
    assert message["sendTimeUtc"] == "2024-05-01T02:00:00Z" and message["phone"] == PHONE
    assert message["anomalies"] == [
        CODE_AS_TEXT,
        MESSAGE_FROM_TABLE,
        SEND_TIME_ISO,
        SEND_TIME_EPOCH,
    ]
    with app.app_context():
        for raw_id in (first, second, answer):
            raw = db.session.get(RawBody, raw_id)
            assert raw.outcome == "accepted" and raw.reprocessed_at is not None
    assert set(ids(client, "?anomaly=coerced")) == {RID}
    assert_no_difference(app)


def test_rebuild_derives_the_anomalies_from_the_raw_bodies(client, app):
    assert post_json(client, DR, receipt(RID, "delivered", code="11001")).status_code == 200
    assert (
        post_json(client, REPLY, reply(RID, PHONE, "hi", send_time=1689575450)).status_code == 200
    )
    with app.app_context():
        db.session.execute(
            db.update(Message)
            .values(anomalies=None, anomaly=False)
            .where(Message.request_id == RID)
        )
        db.session.commit()
    runner = app.test_cli_runner()
    checked = runner.invoke(args=["rebuild", "--check"])
    assert "anomalies" in checked.output and "no differences" not in checked.output
    fixed = runner.invoke(args=["rebuild"])
    assert fixed.exit_code == 0, fixed.output
    assert read(client)["anomalies"] == [CODE_AS_TEXT, SEND_TIME_EPOCH]
    assert_no_difference(app)


# --- the parser: what it keeps reads back as the same time ------------------------------------

iso_times = st.builds(
    lambda when, sep, fraction, zone: when.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + fraction + zone,
    st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9998, 12, 31)),
    st.sampled_from(["T", " ", "t"]),
    st.sampled_from(["", ".5", ".123456", ".123456789"]),
    st.sampled_from(["", "Z", "+08:00", "-0530", "+14", "-12:00"]),
)
epochs = st.integers(0, 10**14 - 1) | st.floats(0, 10**14, exclude_max=True)


@settings(max_examples=300, deadline=None)
@given(send_time=iso_times | epochs)
def test_a_kept_sendtime_reads_back_as_the_time_it_was_taken_for(send_time):
    """The message's sendTime is derived again from the text kept (`send_time_raw`): it must
    read as the very time the body was accepted with, whatever the form."""
    body = receipt(RID, "delivered", send_time=send_time)
    for parse, data in (
        (parse_receipt, body),
        (parse_reply, reply(RID, PHONE, "x", send_time=send_time)),
    ):
        try:
            item = parse(data, ZONE)
        except Invalid as exc:
            assert exc.field == "sendTime"
            continue
        documented = bool(SEND_TIME_RE.match(item.send_time_raw))
        assert bool(item.coerced) != documented and len(item.send_time_raw) <= 32
        assert parse_send_time(item.send_time_raw, ZONE) == item.send_time
        assert item.send_time.tzinfo == UTC
