"""No body is lost and no answer is a server error: whatever value any field of either webhook
or of the registration API carries, the answer is a 4xx naming the problem, a 2xx, or a 503
(kept, push again), and the body is in the raw record. Driven by Hypothesis against the real
database, under the default sendTime zone (UTC+08:00)."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.records.models import RawBody, db
from support.accounts import login_form_token
from support.fixtures import fixture_json

DR = "/webhooks/viber/dr"
REPLY = "/webhooks/viber/message"
API = "/api/messages"
SEND_TIME = r"\A\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\Z"


def raw_rows(app) -> list[RawBody]:
    with app.app_context():
        rows = db.session.execute(db.select(RawBody).order_by(RawBody.id)).scalars().all()
        db.session.expunge_all()
        return rows


@pytest.mark.parametrize(
    "path,fixture,send_time",
    [
        (DR, "dr_delivered", "0001-01-01 00:00:00"),
        (REPLY, "reply_text", "0001-01-01 07:59:59"),
    ],
)
def test_send_time_of_year_one_east_of_utc_is_422_and_kept(
    app, anon_client, path, fixture, send_time
):
    assert app.config["SENDTIME_TZ"] == "UTC+08:00"
    body = json.dumps({**fixture_json(fixture), "sendTime": send_time}).encode()
    response = anon_client.post(path, data=body, content_type="application/json")
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["field"] == "sendTime"
    assert "UTC" in response.get_json()["reason"]
    row = raw_rows(app)[-1]
    assert row.body == body and row.outcome == "rejected" and row.http_status == 422


def test_send_time_of_year_9999_west_of_utc_is_422(app_config, tmp_path):
    from app import create_app

    app = create_app({**app_config, "SENDTIME_TZ": "UTC-05:00"})
    with app.app_context():
        db.create_all()
    body = json.dumps({**fixture_json("dr_seen"), "sendTime": "9999-12-31 23:59:59"}).encode()
    response = app.test_client().post(DR, data=body, content_type="application/json")
    assert response.status_code == 422 and response.get_json()["field"] == "sendTime"
    assert raw_rows(app)[-1].body == body


anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(10**40), 10**40)
    | st.floats()
    | st.text()
    | st.from_regex(SEND_TIME, fullmatch=True),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
send_times = st.from_regex(SEND_TIME, fullmatch=True) | st.sampled_from(
    [
        "0001-01-01 00:00:00",
        "0001-01-01 07:59:59",
        "9999-12-31 23:59:59",
        "2023-02-29 10:00:00",
        "2023-07-13 24:00:00",
        "",
    ]
)
strings = st.text() | st.text(alphabet="0123456789 \x00\u00a0=+-@", max_size=8)


def overrides(fields: dict) -> st.SearchStrategy:
    """Some of `fields` replaced by hostile values (and some removed)."""
    return st.fixed_dictionaries(
        {},
        optional={name: strategy | anything | st.just(OMIT) for name, strategy in fields.items()},
    )


OMIT = object()


def apply(base: dict, changes: dict) -> dict:
    out = dict(base)
    for name, value in changes.items():
        path = name.split(".")
        target = out
        for part in path[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target[part] = dict(target[part])
            target = target[part]
        if value is OMIT:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return out


NUMBERS = st.integers() | st.floats() | st.sampled_from([10**30, -(2**31) - 1, 2**31, 1e12, -0.0])
RECEIPT_FIELDS = {
    "status": strings,
    "requestId": strings,
    "code": NUMBERS,
    "message": strings,
    "sendTime": send_times,
    "cost": anything,
    "cost.currency": strings,
    "cost.localPrice": NUMBERS,
    "cost.originalPrice": NUMBERS,
    "cost.rateType": strings,
}
REPLY_FIELDS = {
    "phone": strings,
    "appkey": strings,
    "traceRequestId": strings,
    "message": anything,
    "message.text": strings,
    "message.media": strings,
    "message.fileName": strings,
    "sendTime": send_times,
}
REGISTRATION_FIELDS = {
    "requestId": strings,
    "phone": strings,
    "text": strings,
    "appkey": strings,
    "functionType": strings,
}
REGISTRATION = {
    "requestId": "f6a7d49946094857ae02812969a83056",
    "phone": "79100000030",
    "text": "hello",
    "appkey": "APP",
    "functionType": "text",
}
CASES = {
    "dr": (
        DR,
        lambda: {
            **fixture_json("dr_success"),
            "cost": {
                "currency": "USD",
                "localPrice": 0.01,
                "originalPrice": 0.01,
                "rateType": "Session",
            },
        },
        RECEIPT_FIELDS,
    ),
    "message": (REPLY, lambda: fixture_json("reply_media"), REPLY_FIELDS),
    "register": (API, lambda: REGISTRATION, REGISTRATION_FIELDS),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_any_value_in_any_field_is_answered_and_kept(app, anon_client, api_token, kind):
    path, base, fields = CASES[kind]
    headers = {"Authorization": f"Bearer {api_token}"} if kind == "register" else {}
    answered = []

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(changes=overrides(fields))
    def run(changes):
        body = json.dumps(apply(base(), changes)).encode()
        before = len(raw_rows(app))
        response = anon_client.post(
            path, data=body, content_type="application/json", headers=headers
        )
        status = response.status_code
        assert status < 500 or status == 503, (status, body)
        if status >= 400:
            error = response.get_json()
            assert error["field"] and error["reason"], error
        rows = raw_rows(app)
        assert len(rows) == before + 1 and rows[-1].body == body
        answered.append(status)

    run()
    # The run reached both sides: applied bodies and refused ones.
    assert any(s < 300 for s in answered) and any(s == 422 for s in answered)


def test_with_the_database_away_nothing_answers_500(app_config):
    """Port 9 on loopback: nothing listens, every connection is refused at once. A webhook
    that passes authentication waits in the spool (200); whatever else needs the database
    answers 503 (push again) instead of 500."""
    from app import create_app
    from app.core.signing import sign

    app = create_app(
        {
            **app_config,
            "WEBHOOK_SIGN_ACCESS_KEY": "ak",
            "WEBHOOK_SIGN_SECRET": "s",
            "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2",
        }
    )
    client = app.test_client()
    body = json.dumps(fixture_json("dr_seen")).encode()
    ts = str(int(__import__("time").time() * 1000))
    signed = {
        "accessKey": "ak",
        "ts": ts,
        "bizType": "7",
        "action": "dr",
        "sign": sign("ak", "dr", "7", ts, body, "s"),
    }
    answers = [
        client.post(
            DR, data=body, content_type="application/json", headers=signed
        ),  # kept in the spool
        client.post(DR, data=body, content_type="application/json"),  # keeping the refused body
        client.post(API, json=REGISTRATION, headers={"Authorization": "Bearer vw_x"}),  # the token
        client.post(
            "/login",
            data={"username": "a", "password": "b", "csrf_token": login_form_token(client)},
        ),  # counting the attempt
    ]
    with client.session_transaction() as session:
        session["_user_id"] = "a-session-token"
    answers.append(client.get("/"))  # finding the sign-in
    assert [a.status_code for a in answers] == [200] + [503] * 4
    assert answers[0].get_data() == b"success"
    from app import ingest

    assert ingest.writer_of(app).spooler.status().bodies == 1
    assert answers[1].get_json()["field"] == "database" and answers[1].headers["Retry-After"]
    ingest.stop(app)  # its drainer would try the absent database for ever
    with app.app_context():
        db.engine.dispose()
