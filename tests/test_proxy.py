"""The pass-through send proxy (app/sending/proxy.py), against a local NXCLOUD send API over
real HTTP: the send arrives upstream byte for byte with its signing headers and nothing of
viberwatch's, the sender gets NXCLOUD's answer as it is, and the message is registered with
its phone, text, type, rate type, appkey and tags; errors upstream are 502/504 and register
nothing; a database outage still answers the sender; and it is no open relay."""

from __future__ import annotations

import json
import threading
import time

import pytest

from app.auth import tokens
from app.config import networks
from app.records.models import ApiToken, Message, MessageTag, RawBody, db
from support.bodies import DR, post_json, receipt
from support.fake_nxcloud import ACCESS_KEY, APPKEY, SECRET, documented_sign, nxcloud_config
from support.wait import until

SEND = "/nxcloud/api/viber/mt"
PHONE = "+79990001122"


@pytest.fixture
def proxy_config(app_config, fake_nxcloud):
    app_config.update(nxcloud_config(fake_nxcloud))
    return app_config


def send_body(text: str = "Your code is 1234", phone: str = PHONE, rate: str = "Transactional"):
    # Spacing and key order as a sending system might write them: forwarded untouched.
    return json.dumps(
        {
            "appkey": APPKEY,
            "phone": phone,
            "functionType": "text",
            "messageData": {"rateType": rate, "text": text},
        },
        indent=1,
        ensure_ascii=False,
    ).encode()


def signed(body: bytes, secret: str = SECRET) -> dict:
    ts = str(int(time.time() * 1000))
    return {
        "Content-Type": "application/json",
        "accessKey": ACCESS_KEY,
        "ts": ts,
        "bizType": "7",
        "action": "mt",
        "sign": documented_sign(ACCESS_KEY, "mt", "7", ts, body, secret),
    }


def proxied(client, body: bytes, token: str | None, *, headers=None, query: str = ""):
    extra = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(
        SEND + query, data=body, headers={**signed(body), **extra, **(headers or {})}
    )


def registered(app, rid: str) -> Message:
    """The message once its registration is in (the proxy answers the sender first)."""
    return until(
        lambda: (m := message(app, rid)) is not None and m.registered_at is not None and m,
        10,
        f"the registration of {rid}",
    )


def message(app, rid: str) -> Message | None:
    with app.app_context():
        try:
            m = db.session.get(Message, rid)
            if m is not None:
                db.session.expunge(m)
            return m
        finally:
            db.session.remove()


def test_a_send_goes_upstream_unchanged_and_is_registered(
    proxy_config, app, anon_client, api_token, fake_nxcloud
):
    body = send_body("Привет, ваш код 1234")
    answer = proxied(
        anon_client,
        body,
        api_token,
        headers={"X-Viberwatch-Tags": "Spring-Promo, otp", "Cookie": "a=b"},
    )
    assert answer.status_code == 200
    (call,) = fake_nxcloud.calls
    assert call["body"] == body  # the exact bytes
    upstream = {k.lower(): v for k, v in call["headers"].items()}
    for name, value in signed(body).items():
        if name != "ts" and name != "sign":
            assert upstream[name.lower()] == value
    assert upstream["sign"] == documented_sign(ACCESS_KEY, "mt", "7", upstream["ts"], body, SECRET)
    for ours in ("authorization", "x-viberwatch-tags", "cookie"):
        assert ours not in upstream
    # The sender's answer is NXCLOUD's, byte for byte.
    assert answer.get_data() == json.dumps(call["answer"]).encode()
    assert answer.mimetype == "application/json"
    rid = call["answer"]["data"]["requestId"]
    m = registered(app, rid)
    assert (m.phone, m.text, m.appkey, m.function_type, m.rate_type, m.tags) == (
        PHONE,
        "Привет, ваш код 1234",
        APPKEY,
        "text",
        "Transactional",
        "otp,spring-promo",
    )
    with app.app_context():
        tags = db.session.execute(db.select(MessageTag.tag).order_by(MessageTag.tag)).scalars()
        assert list(tags) == ["otp", "spring-promo"]


def test_tags_and_the_token_may_come_in_the_query(
    proxy_config, app, anon_client, api_token, fake_nxcloud
):
    answer = proxied(anon_client, send_body(), None, query=f"?token={api_token}&tags=a,b")
    assert answer.status_code == 200
    rid = fake_nxcloud.calls[0]["answer"]["data"]["requestId"]
    assert registered(app, rid).tags == "a,b"


def test_receipts_that_arrive_before_nxcloud_answers_end_in_the_same_record(
    proxy_config, app, anon_client, api_token, fake_nxcloud
):
    """The receipt of a send can reach the webhook before NXCLOUD's answer reaches the
    proxy: the registration that follows ends in the record a registration first would."""

    def receipt_first(request_id: str) -> None:
        assert post_json(app.test_client(), DR, receipt(request_id)).status_code == 200

    fake_nxcloud.before_answer = receipt_first
    assert proxied(anon_client, send_body("late"), api_token).status_code == 200
    first = fake_nxcloud.calls[0]["answer"]["data"]["requestId"]
    fake_nxcloud.before_answer = None
    assert proxied(anon_client, send_body("early"), api_token).status_code == 200
    second = fake_nxcloud.calls[1]["answer"]["data"]["requestId"]
    assert post_json(anon_client, DR, receipt(second)).status_code == 200
    a, b = registered(app, first), registered(app, second)
    assert (a.status, a.phone, a.text, a.receipts_count) == ("delivered", PHONE, "late", 1)
    assert (b.status, b.phone, b.text, b.receipts_count) == ("delivered", PHONE, "early", 1)


@pytest.mark.parametrize("code", [1002, 1003, 9999])
def test_an_nxcloud_error_is_given_back_and_nothing_registered(
    proxy_config, app, anon_client, api_token, fake_nxcloud, code
):
    fake_nxcloud.next_codes.append(code)
    answer = proxied(anon_client, send_body(), api_token)
    assert answer.status_code == 200 and answer.get_json()["code"] == code
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(Message)).scalar() == 0


def test_nxcloud_unreachable_is_502_and_too_slow_504_and_nothing_registered(
    proxy_config, app, anon_client, api_token, fake_nxcloud
):
    fake_nxcloud.delay = 3.0  # NXCLOUD_TIMEOUT is 2 s in these tests
    slow = proxied(anon_client, send_body(), api_token)
    assert slow.status_code == 504 and slow.get_json()["field"] == "upstream"
    fake_nxcloud.delay = 0
    fake_nxcloud.stop()
    gone = proxied(anon_client, send_body(), api_token)
    assert gone.status_code == 502 and gone.get_json()["field"] == "upstream"
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(Message)).scalar() == 0


def test_with_the_database_away_the_sender_still_gets_nxclouds_answer(
    proxy_config, outage, app, anon_client, api_token, fake_nxcloud
):
    """Sent from an allowed network (no token to look up in the database): the registration
    waits in the spool and is applied once the database is back."""
    body = send_body("during the outage")
    headers = signed(body)
    client = app.test_client()
    app.config["PROXY_ALLOW_NETWORKS"] = networks("127.0.0.0/8")  # no token to look up
    outage.begin()
    try:
        answer = client.post(SEND, data=body, headers=headers)
        assert answer.status_code == 200 and answer.get_json()["code"] == 0
    finally:
        outage.end()
    rid = fake_nxcloud.calls[0]["answer"]["data"]["requestId"]
    until(lambda: message(app, rid) is not None, 30, "the spooled registration to be applied")
    assert message(app, rid).text == "during the outage"


def test_it_is_no_open_relay(proxy_config, app, anon_client, fake_nxcloud):
    body = send_body()
    nothing = anon_client.post(SEND, data=body, headers=signed(body))
    assert nothing.status_code == 401 and nothing.get_json()["field"] == "Authorization"
    wrong = anon_client.post(
        SEND, data=body, headers={**signed(body), "Authorization": "Bearer vw_nope"}
    )
    assert wrong.status_code == 401
    app.config["PROXY_ALLOW_NETWORKS"] = networks("10.0.0.0/8")
    elsewhere = anon_client.post(SEND, data=body, headers=signed(body))
    assert elsewhere.status_code == 403 and elsewhere.get_json()["field"] == "source"
    assert fake_nxcloud.calls == []
    with app.app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(RawBody)).scalar() == 0


def test_bad_tags_are_refused_before_anything_is_sent(
    proxy_config, app, anon_client, api_token, fake_nxcloud
):
    too_many = proxied(
        anon_client, send_body(), api_token, headers={"X-Viberwatch-Tags": "a,b,c,d,e,f"}
    )
    assert too_many.status_code == 400 and too_many.get_json()["field"] == "X-Viberwatch-Tags"
    too_long = proxied(anon_client, send_body(), api_token, query="?tags=" + "x" * 129)
    assert too_long.status_code == 400 and too_long.get_json()["field"] == "tags"
    assert fake_nxcloud.calls == []


def test_concurrent_sends_are_each_registered(proxy_config, app, api_token, fake_nxcloud):
    def one(i: int) -> None:
        c = app.test_client()
        assert (
            proxied(c, send_body(f"n{i}", phone=f"+7999000{i:04d}"), api_token).status_code == 200
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    rids = [c["answer"]["data"]["requestId"] for c in fake_nxcloud.calls]
    assert len(rids) == 16
    for rid in rids:
        registered(app, rid)
    with app.app_context():
        texts = {m.text for m in db.session.execute(db.select(Message)).scalars()}
    assert texts == {f"n{i}" for i in range(16)}


def test_a_token_revoked_is_refused_at_the_next_send(
    proxy_config, app, anon_client, api_token, fake_nxcloud
):
    assert proxied(anon_client, send_body(), api_token).status_code == 200
    with app.app_context():
        (row,) = db.session.execute(db.select(ApiToken)).scalars()
        assert row.last_used_at is not None  # noted, as for the API
        tokens.revoke_token(str(row.id))
    refused = proxied(anon_client, send_body(), api_token)
    assert refused.status_code == 401 and refused.get_json()["field"] == "Authorization"
    assert len(fake_nxcloud.calls) == 1
