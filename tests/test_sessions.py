"""Sign-ins that really end: a cookie copied before logout, a password change or
`viberwatch logout-user` opens nothing afterwards (pages, export, API, reprocessing, the
socket), and a live socket of an ended sign-in is closed."""

import pytest
import websocket

from app.core.times import utcnow
from app.records.models import RawBody, UserSession, db
from support.accounts import TEST_PASSWORD, TEST_USER, create_test_user, log_in
from support.live_client import LiveClient
from test_auth import ws_handshake

COOKIE = "viberwatch_session"


def signed_in(app):
    create_test_user(app)
    return log_in(app, app.test_client())


def reach(app, cookie: str, base_url: str) -> dict:
    """What a client holding only `cookie` gets from each kind of endpoint."""
    thief = app.test_client()
    thief.set_cookie(COOKIE, cookie)
    with app.app_context():
        raw_id = db.session.execute(db.select(db.func.max(RawBody.id))).scalar() or 1
    return {
        "page": thief.get("/").status_code,
        "export": thief.get("/export.csv").status_code,
        "api": thief.get("/api/messages/nope").status_code,
        "reprocess": thief.post(f"/rejected/{raw_id}/reprocess").status_code,
        "socket": ws_handshake(base_url, f"{COOKIE}={cookie}"),
    }


OPEN = {
    "page": 200,
    "export": 200,
    "api": 404,
    "reprocess": 400,
    "socket": 101,
}  # 400: no CSRF token
ENDED = {"page": 302, "export": 302, "api": 401, "reprocess": 302, "socket": 401}


def test_a_cookie_saved_before_logout_opens_nothing_after_it(app, live_server):
    browser = signed_in(app)
    browser.post("/webhooks/viber/dr", data=b"{", content_type="application/json")
    saved = browser.get_cookie(COOKIE).value
    assert reach(app, saved, live_server.url) == OPEN
    assert browser.post("/logout").status_code == 302
    assert reach(app, saved, live_server.url) == ENDED


def test_logout_ends_that_sign_in_only(app, live_server):
    first, second = signed_in(app), signed_in(app)
    first.post("/logout")
    assert first.get("/").status_code == 302
    assert second.get("/").status_code == 200


@pytest.mark.parametrize("how", ["set-password", "logout-user"])
def test_a_new_password_or_logout_user_ends_every_sign_in(app, live_server, how):
    browsers = [signed_in(app), signed_in(app)]
    saved = [b.get_cookie(COOKIE).value for b in browsers]
    args = [how, TEST_USER] + (["--password", "a brand new one"] if how == "set-password" else [])
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    if how == "logout-user":
        assert "2 sign-ins of operator ended" in result.output
    for cookie in saved:
        assert reach(app, cookie, live_server.url) == ENDED
    # Signing in again works (with the new password after set-password).
    password = "a brand new one" if how == "set-password" else TEST_PASSWORD
    again = log_in(app, app.test_client(), TEST_USER, password)
    assert again.get("/").status_code == 200


def test_logout_user_of_nobody_is_an_error(app):
    result = app.test_cli_runner().invoke(args=["logout-user", "ghost"])
    assert result.exit_code != 0 and "no user 'ghost'" in result.output


def close_code(ws, timeout: float) -> int:
    """Read until the server's close frame; its code."""
    ws.settimeout(timeout)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big")


def test_the_socket_of_a_logged_out_session_is_closed(app, live_server):
    browser = signed_in(app)
    cookie = f"{COOKIE}={browser.get_cookie(COOKIE).value}"
    other = signed_in(app)
    keeps = LiveClient(live_server.url, f"{COOKIE}={other.get_cookie(COOKIE).value}")
    ends = LiveClient(live_server.url, cookie)
    assert browser.post("/logout").status_code == 302
    assert close_code(ends.ws, 10) == 1008
    # The other sign-in's socket stays open.
    keeps.ws.ping()
    assert keeps.ws.connected
    keeps.close()


@pytest.fixture
def app_config(app_config):
    return {**app_config, "LIVE_SESSION_CHECK_INTERVAL": 0.2}


def test_a_sign_in_ended_by_another_process_closes_the_socket_too(app, live_server):
    """No signal reaches this process: the periodic check finds the ended sign-in."""
    browser = signed_in(app)
    socket = LiveClient(live_server.url, f"{COOKIE}={browser.get_cookie(COOKIE).value}")
    with app.app_context():
        db.session.execute(db.update(UserSession).values(ended_at=utcnow()))
        db.session.commit()
    assert close_code(socket.ws, 10) == 1008
