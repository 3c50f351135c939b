"""Sending from a thread: the reply box, the session window and `viberwatch send`, against a
local fake of NXCLOUD's send API over real HTTP."""

import socket
from datetime import timedelta

import pytest
from sqlalchemy import func

from app.core.times import utcnow
from app.records.models import Activity, Message, MessageTag, RawBody, Reply, SendAttempt, db
from app.sending import outbound
from support.bodies import DR, REPLY, post_json, receipt, reply
from support.fake_nxcloud import nxcloud_config

PHONE = "79100000030"


@pytest.fixture
def sending_config(app_config, fake_nxcloud):
    app_config.update(nxcloud_config(fake_nxcloud))


def user_writes(client, phone=PHONE, text="Can I change the time?", trace="a" * 32):
    body = reply(trace, phone, text, appkey="FakeApp1", send_time="2024-06-03 17:00:00")
    response = post_json(client, REPLY, body)
    assert response.status_code == 200


def send(client, text, phone=PHONE, htmx=True, **form):
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(f"/conversations/{phone}/send", data={"text": text, **form}, headers=headers)


def attempts(app):
    with app.app_context():
        return [
            (a.outcome, a.error_code, a.error_kind, a.request_id)
            for a in db.session.execute(db.select(SendAttempt).order_by(SendAttempt.id)).scalars()
        ]


def test_a_reply_is_sent_registered_and_shown_in_the_thread(
    sending_config, app, client, fake_nxcloud
):
    user_writes(client)
    response = send(client, "Yes, <b>tomorrow</b> at 10")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    request_id = fake_nxcloud.sent[0]["requestId"]
    assert f"Sent · requestId <code>{request_id}</code>" in html
    assert fake_nxcloud.sent[0]["phone"] == PHONE
    assert fake_nxcloud.sent[0]["messageData"] == {
        "rateType": "Session",
        "text": "Yes, <b>tomorrow</b> at 10",
    }
    assert attempts(app) == [("sent", 0, None, request_id)]
    with app.app_context():
        assert db.session.execute(db.select(SendAttempt.user)).scalar_one() == "operator"
        m = db.session.get(Message, request_id)
        assert (m.phone, m.text, m.function_type, m.appkey) == (
            PHONE,
            "Yes, <b>tomorrow</b> at 10",
            "text",
            "FakeApp1",
        )
        assert m.registered_at is not None and m.status is None
        raw = db.session.execute(
            db.select(RawBody).where(RawBody.request_id == request_id)
        ).scalar_one()
        assert (raw.endpoint, raw.outcome) == ("register", "accepted")
        assert (
            db.session.execute(
                db.select(func.count()).where(
                    Activity.kind == "register", Activity.request_id == request_id
                )
            ).scalar()
            == 1
        )
    thread = client.get(f"/conversations/{PHONE}").get_data(as_text=True)
    assert f'id="thread-msg-{request_id}" data-status="pending"' in thread
    assert "Yes, &lt;b&gt;tomorrow&lt;/b&gt; at 10" in thread and "<b>tomorrow" not in thread
    # Its receipts land on the same thread entry.
    delivered = receipt(request_id, "delivered", send_time="2024-06-03 17:01:00")
    assert post_json(client, DR, delivered).status_code == 200
    thread = client.get(f"/conversations/{PHONE}").get_data(as_text=True)
    assert f'id="thread-msg-{request_id}" data-status="delivered"' in thread


def test_without_htmx_the_form_redirects_back_to_the_thread(
    sending_config, app, client, fake_nxcloud
):
    user_writes(client)
    response = send(client, "hello", htmx=False)
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/conversations/{PHONE}")
    assert len(fake_nxcloud.sent) == 1


@pytest.mark.parametrize(
    "code, meaning, solution",
    [
        (1102, "Insufficient balance", "recharge"),
        (-1, "Failure", "try again"),
        (1005, "Insufficient permissions", "permissions"),
        (9002, "Phone number error", "check the correctness of the number"),
    ],
)
def test_an_nxcloud_error_is_shown_with_meaning_and_solution_and_kept(
    sending_config, app, client, fake_nxcloud, code, meaning, solution
):
    user_writes(client)
    fake_nxcloud.next_codes.append(code)
    html = send(client, "hello").get_data(as_text=True)
    assert f"<strong>Not sent</strong> (code {code})" in html
    assert meaning in html and solution in html
    assert attempts(app) == [("failed", code, "nxcloud", None)]
    with app.app_context():
        assert (
            db.session.execute(
                db.select(func.count())
                .select_from(Message)
                .where(Message.registered_at.is_not(None))
            ).scalar()
            == 0
        )
    # The failed send stays visible in the thread.
    thread = client.get(f"/conversations/{PHONE}").get_data(as_text=True)
    assert 'id="failed-sends"' in thread and f"code {code}: {meaning}" in thread


def test_a_wrong_secret_shows_invalid_signature(sending_config, app, client, fake_nxcloud):
    app.config["NXCLOUD_ACCESS_SECRET"] = "wrong"
    user_writes(client)
    html = send(client, "hello").get_data(as_text=True)
    assert "(code 1003)" in html and "Invalid signature" in html and "NXCLOUD_ACCESS_SECRET" in html
    assert attempts(app) == [("failed", 1003, "nxcloud", None)]


def test_a_timeout_is_shown_never_a_stack_trace(sending_config, app, client, fake_nxcloud):
    app.config["NXCLOUD_TIMEOUT"] = 0.3
    fake_nxcloud.delay = 1.0
    user_writes(client)
    response = send(client, "hello")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "NXCLOUD did not answer within 0.3 s" in html and "Traceback" not in html
    assert attempts(app) == [("failed", None, "timeout", None)]


def test_a_refused_connection_is_shown_and_kept(sending_config, app, client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        app.config["NXCLOUD_BASE_URL"] = f"http://127.0.0.1:{s.getsockname()[1]}"
    user_writes(client)
    html = send(client, "hello").get_data(as_text=True)
    assert "could not reach NXCLOUD at" in html and "Traceback" not in html
    assert attempts(app) == [("failed", None, "network", None)]
    assert "could not reach NXCLOUD" in client.get(f"/conversations/{PHONE}").get_data(as_text=True)


def test_missing_settings_are_named(app, client):
    user_writes(client)
    html = send(client, "hello").get_data(as_text=True)
    assert "not configured: NXCLOUD_ACCESS_KEY, NXCLOUD_ACCESS_SECRET, NXCLOUD_APPKEY" in html
    assert attempts(app) == [("failed", None, "config", None)]


def test_an_empty_text_is_refused_before_anything_is_sent(
    sending_config, app, client, fake_nxcloud
):
    response = send(client, "   ")
    # htmx swaps only 2xx answers, so the box with its error comes back as 200.
    assert response.status_code == 200
    assert (
        '<p class="send-result send-error" role="alert">text: must not be empty</p>'
        in response.get_data(as_text=True)
    )
    plain = send(client, "   ", htmx=False)
    assert plain.status_code == 422 and "text: must not be empty" in plain.get_data(as_text=True)
    assert fake_nxcloud.calls == [] and attempts(app) == []


def test_a_send_outside_the_session_window_asks_first(sending_config, app, client, fake_nxcloud):
    html = client.get(f"/conversations/{PHONE}/reply").get_data(as_text=True)
    assert "No session" in html and "never written" in html
    first = send(client, "hello").get_data(as_text=True)
    assert "Send anyway" in first and 'name="confirm" value="1"' in first
    assert "hello</textarea>" in first
    assert fake_nxcloud.calls == [] and attempts(app) == []
    confirmed = send(client, "hello", confirm="1").get_data(as_text=True)
    assert "Sent · requestId" in confirmed and len(fake_nxcloud.sent) == 1


def test_five_in_a_row_then_a_warning(sending_config, app, client, fake_nxcloud):
    user_writes(client)
    for n in range(5):
        html = send(client, f"message {n}").get_data(as_text=True)
        assert "Sent · requestId" in html
        assert f"<strong>{4 - n}</strong> session" in html
    held = send(client, "a sixth").get_data(as_text=True)
    assert "Send anyway" in held and "at most 5 in a row" in held
    assert len(fake_nxcloud.sent) == 5
    # The user answers: the count of consecutive messages starts again.
    user_writes(client, text="ok", trace=fake_nxcloud.sent[-1]["requestId"])
    assert "Sent · requestId" in send(client, "a sixth").get_data(as_text=True)
    with app.app_context():
        window = outbound.session_window(PHONE)
    assert (window.open, window.consecutive, window.sent_in_session) == (True, 1, 6)
    assert (window.remaining_consecutive, window.remaining_session) == (4, 54)


def add_reply(phone, at, n):
    raw = RawBody(
        endpoint="message",
        received_at=at,
        content_type="application/json",
        body=b"{}",
        outcome="accepted",
        http_status=200,
    )
    db.session.add(raw)
    db.session.flush()
    db.session.add(
        Reply(
            raw_id=raw.id,
            content_hash=f"h{n}",
            phone=phone,
            appkey="a",
            trace_request_id="t",
            text="hi",
            send_time_raw="2024-01-01 00:00:00",
            send_time=at,
            received_at=at,
        )
    )


def add_sent(phone, at, n):
    db.session.add(
        Message(
            request_id=f"r{n}",
            phone=phone,
            registered_at=at,
            created_at=at,
            last_activity_at=at,
            anomaly=False,
            receipts_count=0,
            replies_count=0,
        )
    )


def test_the_window_closes_24_hours_after_the_last_reply_and_a_session_holds_60(app):
    now = utcnow()
    with app.app_context():
        # Replies 20 h apart keep one session going; the gap before them started it.
        add_reply(PHONE, now - timedelta(hours=100), 0)
        add_reply(PHONE, now - timedelta(hours=40), 1)
        add_reply(PHONE, now - timedelta(hours=20), 2)
        for n in range(58):
            add_sent(PHONE, now - timedelta(hours=39, minutes=n), n)
        add_sent(PHONE, now - timedelta(hours=60), 99)  # before the session: not counted
        add_sent(PHONE, now - timedelta(hours=1), 100)
        add_sent(PHONE, now - timedelta(minutes=30), 101)
        db.session.commit()
        window = outbound.session_window(PHONE, now)
        assert window.open and window.started_at == now - timedelta(hours=40)
        assert window.closes_at == now + timedelta(hours=4)
        assert (window.sent_in_session, window.consecutive) == (60, 2)
        assert (window.remaining_session, window.remaining_consecutive, window.remaining) == (
            0,
            3,
            0,
        )
        assert window.warnings() == [
            "60 messages were sent in this session; at most 60 are allowed."
        ]
        later = outbound.session_window(PHONE, now + timedelta(hours=4))
        assert not later.open and later.remaining == 0
        assert "24-hour session window closed" in later.warnings()[0]


def test_send_command(sending_config, app, client, fake_nxcloud):
    runner = app.test_cli_runner()
    held = runner.invoke(args=["send", "--phone", PHONE, "--text", "hi"])
    assert held.exit_code == 2 and "never written" in held.output and fake_nxcloud.calls == []
    ok = runner.invoke(args=["send", "--phone", PHONE, "--text", "hi", "--yes"])
    assert ok.exit_code == 0, ok.output
    assert f"sent: requestId {fake_nxcloud.sent[0]['requestId']}" in ok.output
    fake_nxcloud.next_codes.append(1102)
    failed = runner.invoke(args=["send", "--phone", PHONE, "--text", "hi", "--yes"])
    assert failed.exit_code == 1
    assert "failed (code 1102): Insufficient balance" in failed.output
    assert "what to do: Insufficient account balance" in failed.output
    assert [a[0] for a in attempts(app)] == ["sent", "failed"]


def test_sending_needs_a_login_and_the_csrf_token(
    sending_config, app, client, anon_client, fake_nxcloud
):
    anonymous = anon_client.post(
        f"/conversations/{PHONE}/send", data={"text": "hello", "confirm": "1"}
    )
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith("/login")
    del client.environ_base["HTTP_X_CSRFTOKEN"]
    forged = client.post(f"/conversations/{PHONE}/send", data={"text": "hello", "confirm": "1"})
    assert forged.status_code == 400
    assert fake_nxcloud.calls == [] and attempts(app) == []


def tags_of(app, request_id):
    with app.app_context():
        m = db.session.get(Message, request_id)
        rows = db.session.execute(
            db.select(MessageTag.tag)
            .where(MessageTag.request_id == request_id)
            .order_by(MessageTag.tag)
        ).scalars()
        return m.tags, list(rows)


def test_the_reply_box_registers_the_sent_message_with_its_tags(
    sending_config, app, client, fake_nxcloud
):
    user_writes(client)
    html = send(client, "Spring is here", tags=" Spring-Promo, otp ,, spring-promo").get_data(
        as_text=True
    )
    request_id = fake_nxcloud.sent[0]["requestId"]
    assert f"Sent · requestId <code>{request_id}</code> · tags spring-promo, otp" in html
    # The tags are viberwatch's: nothing of them goes to NXCLOUD.
    assert b"promo" not in fake_nxcloud.calls[0]["body"]
    assert tags_of(app, request_id) == ("otp,spring-promo", ["otp", "spring-promo"])
    # The box is empty again for the next message, tags included.
    assert 'id="reply-tags" name="tags" value=""' in html
    # The messages page finds it by its tag.
    listing = client.get("/?tag=spring-promo").get_data(as_text=True)
    assert request_id in listing
    # No tags: none registered.
    send(client, "No campaign")
    assert tags_of(app, fake_nxcloud.sent[1]["requestId"]) == (None, [])


@pytest.mark.parametrize(
    "tags, reason",
    [
        ("a,b,c,d,e,f", "tags: a message has at most 5 tags, got 6"),
        ("x" * 129, "tags: a tag is longer than 128 characters"),
        ("ok, bad\ttag", "tags: a tag has a comma or a character that is not printable"),
    ],
)
def test_bad_tags_are_shown_in_the_form_and_nothing_is_sent(
    sending_config, app, client, fake_nxcloud, tags, reason
):
    user_writes(client)
    response = send(client, "hello", tags=tags)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert '<p id="reply-tags-error" class="send-result send-error" role="alert">' + reason in html
    assert 'aria-describedby="reply-tags-hint reply-tags-error" aria-invalid="true"' in html
    # What was typed stays for a correction.
    assert "hello</textarea>" in html and 'name="tags" value="' in html
    plain = send(client, "hello", htmx=False, tags=tags)
    assert plain.status_code == 422 and reason in plain.get_data(as_text=True)
    assert fake_nxcloud.calls == [] and attempts(app) == []


def test_tags_are_kept_through_send_anyway(sending_config, app, client, fake_nxcloud):
    held = send(client, "hello", tags="Winter").get_data(as_text=True)
    assert "Send anyway" in held and 'name="tags" value="Winter"' in held
    assert fake_nxcloud.calls == []
    send(client, "hello", tags="Winter", confirm="1")
    assert tags_of(app, fake_nxcloud.sent[0]["requestId"]) == ("winter", ["winter"])


def test_send_command_registers_its_tags(sending_config, app, fake_nxcloud):
    runner = app.test_cli_runner()
    args = ["send", "--phone", PHONE, "--text", "hi", "--yes"]
    ok = runner.invoke(args=[*args, "--tag", "Spring-Promo", "--tag", "otp,vip"])
    assert ok.exit_code == 0, ok.output
    request_id = fake_nxcloud.sent[0]["requestId"]
    assert f"sent: requestId {request_id} (tags: spring-promo, otp, vip)" in ok.output
    assert tags_of(app, request_id) == ("otp,spring-promo,vip", ["otp", "spring-promo", "vip"])
    for bad, reason in (
        (["--tag", "a,b,c", "--tag", "d,e,f"], "--tag: a message has at most 5 tags, got 6"),
        (["--tag", "y" * 129], "--tag: a tag is longer than 128 characters"),
    ):
        refused = runner.invoke(args=[*args, *bad])
        assert refused.exit_code == 2 and reason in refused.output, refused.output
    assert len(fake_nxcloud.calls) == 1 and [a[0] for a in attempts(app)] == ["sent"]
