"""The reply box in a real browser: Chromium driven by Playwright against a real server and
a local fake of NXCLOUD's send API; the sent message's receipts arrive live."""

import httpx
import pytest

from support import bodies
from support.browser import signed_in_tab
from support.fake_nxcloud import nxcloud_config

PHONE = "79100000077"
WRITES_AT = "2024-06-03 17:00:00"  # the user's reply
RECEIPTS_AT = "2024-06-03 17:01:00"  # the receipts of the answer sent to it


@pytest.fixture
def sending_config(app_config, fake_nxcloud):
    app_config.update(nxcloud_config(fake_nxcloud))


@pytest.fixture
def signed_in(browser, sending_config, app, live_server):
    """The shared browser, signed in, with NXCLOUD's send API played by the local fake."""
    context, pg = signed_in_tab(browser, app, live_server.url)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on(
        "console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None
    )
    pg.reload()
    yield pg
    context.close()
    # Nothing the page did broke the Content-Security-Policy or threw.
    assert errors == [], errors


def push(server, path, body):
    response = httpx.post(server.url + path, json=body, timeout=10)
    assert response.status_code == 200, response.text


def user_writes(server, text="When do you open?"):
    body = bodies.reply("b" * 32, PHONE, text, appkey="FakeApp1", send_time=WRITES_AT)
    push(server, bodies.REPLY, body)


def open_thread(pg):
    pg.goto(f"/conversations/{PHONE}")
    pg.wait_for_selector("body[data-live-state=live]")


def test_a_reply_sent_from_the_thread_is_delivered_live(signed_in, live_server, fake_nxcloud):
    pg = signed_in
    user_writes(live_server)
    open_thread(pg)
    assert "Session open" in pg.locator("#session-window").inner_text()
    assert "5 of 5 before the user must reply" in pg.locator("#session-window").inner_text()
    pg.fill("#reply-text", "We open at 9, see you <soon>")
    pg.click("#reply-box button[type=submit]")
    pg.wait_for_selector("#reply-box .send-ok")
    request_id = fake_nxcloud.sent[0]["requestId"]
    assert request_id in pg.locator("#reply-box .send-ok").inner_text()
    assert pg.locator("#reply-text").input_value() == ""
    assert "4 of 5 before the user must reply" in pg.locator("#session-window").inner_text()
    # The sent message joins the thread without a reload, then its receipts move it on.
    sent = pg.locator(f"#thread #thread-msg-{request_id}")
    sent.wait_for()
    assert "We open at 9, see you <soon>" in sent.inner_text()
    push(live_server, bodies.DR, bodies.receipt(request_id, "success", send_time=RECEIPTS_AT))
    push(live_server, bodies.DR, bodies.receipt(request_id, "delivered", send_time=RECEIPTS_AT))
    pg.wait_for_selector(f"#thread-msg-{request_id}[data-status=delivered]")
    push(live_server, bodies.DR, bodies.receipt(request_id, "seen", send_time=RECEIPTS_AT))
    pg.wait_for_selector(f"#thread-msg-{request_id}[data-status=seen]")
    assert pg.locator(f"#thread-msg-{request_id}").count() == 1


def test_a_refused_send_is_explained_and_listed(signed_in, live_server, fake_nxcloud):
    pg = signed_in
    user_writes(live_server)
    open_thread(pg)
    fake_nxcloud.next_codes.append(1102)
    pg.fill("#reply-text", "Your order is ready")
    pg.click("#reply-box button[type=submit]")
    error = pg.locator("#reply-box .send-error")
    error.wait_for()
    assert "Not sent (code 1102): Insufficient balance" in error.inner_text()
    assert "recharge" in error.inner_text()
    # The text stays in the box for another try, and the attempt is listed after a reload.
    assert pg.locator("#reply-text").input_value() == "Your order is ready"
    open_thread(pg)
    assert "code 1102: Insufficient balance" in pg.locator("#failed-sends").inner_text()


def test_a_send_outside_the_window_needs_a_second_click(signed_in, live_server, fake_nxcloud):
    pg = signed_in
    user_writes(live_server)
    # A phone that never wrote has no open session.
    other = "79100000088"
    pg.goto(f"/conversations/{other}/reply")
    assert "No session" in pg.locator("#session-window").inner_text()
    pg.fill("#reply-text", "Hello first")
    pg.click("#reply-box button[type=submit]")
    pg.wait_for_selector("#reply-box .send-warning[role=alert]")
    assert fake_nxcloud.calls == []
    pg.click("#reply-box button:has-text('Send anyway')")
    pg.wait_for_selector("#reply-box .send-ok")
    assert [s["phone"] for s in fake_nxcloud.sent] == [other]


def test_the_session_window_opens_live_when_the_user_writes(signed_in, live_server, api_token):
    pg = signed_in
    response = httpx.post(
        live_server.url + "/api/messages",
        headers={"Authorization": f"Bearer {api_token}"},
        json={"requestId": "c" * 32, "phone": PHONE, "text": "Your order shipped"},
        timeout=10,
    )
    assert response.status_code == 201
    open_thread(pg)
    assert "No session" in pg.locator("#session-window").inner_text()
    push(
        live_server,
        bodies.REPLY,
        bodies.reply("c" * 32, PHONE, "Thanks", appkey="FakeApp1", send_time=WRITES_AT),
    )
    pg.wait_for_selector("#session-window.is-open")
    assert "5 of 5 before the user must reply" in pg.locator("#session-window").inner_text()


@pytest.mark.parametrize("width, height", [(1366, 900), (390, 844)])
def test_tags_typed_in_the_reply_box_are_registered_and_bad_ones_explained(
    signed_in, live_server, fake_nxcloud, app, width, height
):
    from app.records.models import Message, db

    pg = signed_in
    pg.set_viewport_size({"width": width, "height": height})
    user_writes(live_server)
    open_thread(pg)
    # The tags field is labelled and described, and the box fits the window.
    tags = pg.get_by_label("Tags (optional)")
    assert tags.get_attribute("aria-describedby") == "reply-tags-hint"
    fits = pg.evaluate(
        """() => [document.documentElement.scrollWidth, window.innerWidth,
                  document.querySelector('#reply-box').scrollWidth,
                  document.querySelector('#reply-box').clientWidth]"""
    )
    assert fits[0] <= fits[1] and fits[2] <= fits[3] + 1, fits
    box = tags.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width
    # Six tags: the form says what is wrong next to the field, nothing goes to NXCLOUD.
    pg.fill("#reply-text", "Our spring sale starts today")
    tags.fill("spring, sale, a, b, c, d")
    pg.click("#reply-box button[type=submit]")
    error = pg.locator("#reply-tags-error")
    error.wait_for()
    assert "tags: a message has at most 5 tags, got 6" in error.inner_text()
    assert pg.locator("#reply-tags").get_attribute("aria-invalid") == "true"
    assert fake_nxcloud.calls == []
    assert pg.locator("#reply-text").input_value() == "Our spring sale starts today"
    # Corrected, it is sent and registered with the tags.
    pg.fill("#reply-tags", "Spring, Sale")
    pg.click("#reply-box button[type=submit]")
    pg.wait_for_selector("#reply-box .send-ok")
    request_id = fake_nxcloud.sent[0]["requestId"]
    assert "tags spring, sale" in pg.locator("#reply-box .send-ok").inner_text()
    assert pg.locator("#reply-tags").input_value() == ""
    assert pg.locator("#reply-tags-error").count() == 0
    with app.app_context():
        assert db.session.get(Message, request_id).tags == "sale,spring"
