"""Logins: nothing but the login page (and endpoints with their own authentication) answers
without one; sign-in, sign-out, expiry, cookies, CSRF, `next`, rate limits, secret key,
security headers, and the user commands."""

import http.client
import os
import re
import stat
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from app import create_app
from app.auth.security import CONTENT_SECURITY_POLICY
from app.core.services import services
from app.records.models import LoginFailure, User, db
from support.accounts import (
    CSRF_INPUT_RE,
    TEST_PASSWORD,
    TEST_USER,
    create_test_user,
    log_in,
    login_form_token,
)
from support.fixtures import fixture_bytes
from support.servers import LiveServer

# Endpoints that authenticate on their own or need nothing; everything else needs a login.
PUBLIC = {
    "auth.login",
    "static",
    "favicon",
    "openapi.document",
    "health.healthz",
    "metrics.scrape",
    "webhooks.delivery_receipt",
    "webhooks.user_reply",
}
ARGS = {
    "request_id": "f6a7d49946094857ae02812969a83056",
    "phone": "79100000030",
    "raw_id": 1,
    "filename": "app.css",
    "user_id": 1,
    "token_id": 1,
    "sid": "0" * 64,
}


def routes(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method


def test_every_page_fragment_export_and_api_needs_a_login(app, anon_client):
    checked = 0
    for rule, method in routes(app):
        if rule.endpoint in PUBLIC:
            continue
        path = rule.build({k: v for k, v in ARGS.items() if k in rule.arguments})[1]
        response = anon_client.open(path, method=method)
        checked += 1
        # Nothing of the page leaks into the refusal.
        assert b"<table" not in response.data and b"<tr" not in response.data
        if rule.websocket:  # a plain GET does not match it; the handshake is tested below
            assert response.status_code == 400
            continue
        if response.status_code == 401:  # the JSON API
            assert response.get_json()["reason"], (rule.rule, method)
            continue
        assert response.status_code == 302, (rule.rule, method, response.status_code)
        assert urlsplit(response.location).path == "/login", (rule.rule, method)
        # A fragment request sends the whole window to the login page instead.
        fragment = anon_client.open(path, method=method, headers={"HX-Request": "true"})
        assert fragment.status_code == 401, (rule.rule, method)
        assert urlsplit(fragment.headers["HX-Redirect"]).path == "/login"
    # The dashboard, conversations, exports, the socket and the API are all among them.
    assert checked >= 8


def test_public_endpoints_stay_reachable(app, anon_client):
    assert anon_client.get("/login").status_code == 200
    assert anon_client.get("/healthz").status_code == 200
    assert anon_client.get("/openapi.json").status_code == 200
    assert anon_client.get("/favicon.ico").status_code == 200
    assert (
        anon_client.post(
            "/webhooks/viber/dr", data=fixture_bytes("dr_seen"), content_type="application/json"
        ).status_code
        == 200
    )


def test_pages_send_the_browser_to_login_with_next(live_server):
    response = httpx.get(live_server.url + "/conversations?q=a%20b")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert (
        location.path == "/login"
        and "next=/conversations?q%3Da%2520b" in location.query.replace("%2F", "/")
    )


def test_api_without_credentials_is_401_json(live_server):
    response = httpx.get(live_server.url + "/api/messages/x")
    assert response.status_code == 401
    assert response.json()["field"] == "Authorization"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    post = httpx.post(live_server.url + "/api/messages", json={"requestId": "x", "phone": "1"})
    assert post.status_code == 401


def form_token(html: str) -> str:
    return CSRF_INPUT_RE.search(html).group(1)


def test_login_and_logout_over_http(app, live_server):
    create_test_user(app)
    with httpx.Client(base_url=live_server.url) as browser:
        page = browser.get("/login")
        assert 'name="username"' in page.text and 'name="password"' in page.text
        token = form_token(page.text)
        wrong = browser.post(
            "/login", data={"username": TEST_USER, "password": "nope", "csrf_token": token}
        )
        assert wrong.status_code == 401 and "Unknown username or wrong password" in wrong.text
        unknown = browser.post(
            "/login", data={"username": "ghost", "password": "nope", "csrf_token": token}
        )
        assert unknown.status_code == 401 and "Unknown username or wrong password" in unknown.text
        assert browser.get("/").status_code == 302

        ok = browser.post(
            "/login",
            data={
                "username": TEST_USER,
                "password": TEST_PASSWORD,
                "csrf_token": token,
                "next": "/conversations",
            },
        )
        assert ok.status_code == 302 and ok.headers["Location"] == "/conversations"
        home = browser.get("/")
        assert home.status_code == 200 and TEST_USER in home.text
        logout_token = form_token(home.text)

        assert browser.post("/logout").status_code == 400  # no CSRF token
        assert browser.get("/").status_code == 200
        out = browser.post("/logout", data={"csrf_token": logout_token})
        assert out.status_code == 302 and out.headers["Location"] == "/login"
        assert browser.get("/").status_code == 302
    with app.app_context():
        assert db.session.execute(db.select(User)).scalar_one().last_login_at is not None


def test_login_form_needs_its_csrf_token(app, anon_client):
    create_test_user(app)
    response = anon_client.post("/login", data={"username": TEST_USER, "password": TEST_PASSWORD})
    assert response.status_code == 400
    assert anon_client.get("/").status_code == 302


def test_state_changing_requests_need_the_csrf_token(app, client):
    bare = app.test_client()
    log_in(app, bare)
    del bare.environ_base["HTTP_X_CSRFTOKEN"]
    response = bare.post("/api/messages", json={"requestId": "r1", "phone": "1"})
    assert response.status_code == 400 and response.get_json()["field"] == "csrf_token"
    forged = bare.post(
        "/api/messages", json={"requestId": "r1", "phone": "1"}, headers={"X-CSRFToken": "forged"}
    )
    assert forged.status_code == 400
    # The default test client sends the token as htmx does, from base.html's hx-headers.
    assert client.post("/api/messages", json={"requestId": "r1", "phone": "1"}).status_code == 201


def test_base_page_sends_the_csrf_header_with_htmx(client):
    html = client.get("/").get_data(as_text=True)
    match = re.search(r"hx-headers='\{\"X-CSRFToken\": \"([^\"]+)\"\}'", html)
    assert match
    assert (
        client.post(
            "/api/messages",
            json={"requestId": "r2", "phone": "1"},
            headers={"X-CSRFToken": match.group(1)},
        ).status_code
        == 201
    )


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "http:evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "/%0d%0aLocation:%20https://evil.example",
        " //evil.example",
        "evil.example",
        "/\t/evil.example",
        "/\r\nLocation: https://evil.example",
    ],
)
def test_next_never_leaves_the_site(app, anon_client, target):
    create_test_user(app)
    response = anon_client.post(
        "/login",
        data={
            "username": TEST_USER,
            "password": TEST_PASSWORD,
            "next": target,
            "csrf_token": login_form_token(anon_client),
        },
    )
    assert response.status_code == 302
    location = response.headers["Location"]
    parts = urlsplit(location)
    assert location.startswith("/") and not location.startswith("//"), location
    assert not parts.scheme and not parts.netloc and "\\" not in location
    assert not any(c in location for c in "\r\n\t")
    # Anything but a plain local path goes home.
    if target != "/%0d%0aLocation:%20https://evil.example":
        assert location == "/", location


def test_next_keeps_a_local_path_with_its_query(app, anon_client):
    create_test_user(app)
    response = anon_client.post(
        "/login?next=/messages/abc%3Fx",
        data={
            "username": TEST_USER,
            "password": TEST_PASSWORD,
            "csrf_token": login_form_token(anon_client),
        },
    )
    assert response.headers["Location"] == "/messages/abc?x"


def test_login_expires_however_active(app, client):
    assert client.get("/").status_code == 200
    with client.session_transaction() as sess:
        sess["login_at"] = int(time.time()) - app.config["LOGIN_MAX_AGE"] - 1
    response = client.get("/")
    assert response.status_code == 302 and urlsplit(response.location).path == "/login"
    # The session is gone, not just refused once.
    with client.session_transaction() as sess:
        assert "_user_id" not in sess


def test_session_cookie_flags(app, anon_client):
    create_test_user(app)
    response = anon_client.post(
        "/login",
        data={
            "username": TEST_USER,
            "password": TEST_PASSWORD,
            "csrf_token": login_form_token(anon_client),
        },
    )
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("viberwatch_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Expires=" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back

    https = app.test_client()
    page = https.get("/login", base_url="https://localhost")
    login = https.post(
        "/login",
        base_url="https://localhost",
        headers={"Referer": "https://localhost/login"},
        data={
            "username": TEST_USER,
            "password": TEST_PASSWORD,
            "csrf_token": form_token(page.get_data(as_text=True)),
        },
    )
    assert login.status_code == 302 and "; Secure" in login.headers["Set-Cookie"]


def test_cookie_secure_can_be_forced(app_config):
    app = create_app({**app_config, "COOKIE_SECURE": True})
    assert "; Secure" in app.test_client().get("/login").headers["Set-Cookie"]


def failed(client, username, password="wrong", address="192.0.2.1"):
    token = login_form_token(client)
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token},
        environ_base={"REMOTE_ADDR": address},
    )


def limited_app(app_config, **settings):
    app = create_app({**app_config, **settings})
    with app.app_context():
        db.create_all()
    create_test_user(app)
    return app


def test_no_stranger_can_lock_the_owner_out(app_config):
    """Failures from many addresses do not stop the right password from an address that has
    not failed; they do stop every address that has, and new guesses from the same ones."""
    app = limited_app(app_config, LOGIN_MAX_FAILURES_PER_ACCOUNT=3)
    browser = app.test_client()
    for i in range(3):
        assert failed(browser, TEST_USER, address=f"192.0.2.{i}").status_code == 401
    for i in range(3):  # the guessers: right password or not, and the name's case does not matter
        blocked = failed(browser, TEST_USER.upper(), TEST_PASSWORD, address=f"192.0.2.{i}")
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    # A new address gets one try at a guarded account: a wrong one, and it is out too.
    assert failed(browser, TEST_USER, address="192.0.2.200").status_code == 401
    assert failed(browser, TEST_USER, TEST_PASSWORD, address="192.0.2.200").status_code == 429
    # The owner, from an address without failures, signs in.
    assert failed(browser, TEST_USER, TEST_PASSWORD, address="198.51.100.7").status_code == 302
    with app.app_context():
        assert db.session.execute(db.select(db.func.count(LoginFailure.id))).scalar_one() == 4


def test_failed_logins_are_limited_per_address(app_config):
    app = create_app({**app_config, "LOGIN_MAX_FAILURES_PER_ADDRESS": 4})
    with app.app_context():
        db.create_all()
    create_test_user(app)
    browser = app.test_client()
    for i in range(4):
        assert failed(browser, f"guess{i}").status_code == 401
    assert failed(browser, TEST_USER, TEST_PASSWORD).status_code == 429
    # Another address is not held back by this one's guessing.
    assert failed(browser, TEST_USER, TEST_PASSWORD, address="203.0.113.9").status_code == 302


def test_a_success_forgives_that_address_only(app):
    create_test_user(app)
    browser = app.test_client()
    failed(browser, TEST_USER, address="203.0.113.1")
    for _ in range(2):
        failed(browser, TEST_USER, address="192.0.2.1")
    assert failed(browser, TEST_USER, TEST_PASSWORD, address="203.0.113.1").status_code == 302
    with app.app_context():
        remaining = db.session.execute(db.select(LoginFailure.address)).scalars().all()
    assert remaining == ["192.0.2.1", "192.0.2.1"]


def attempt_at_once(base_url: str, count: int, password="wrong", addresses=None) -> list[int]:
    """`count` sign-ins posted at the same moment, each from its own browser session."""
    browsers = [httpx.Client(base_url=base_url, timeout=60) for _ in range(count)]
    tokens = [form_token(b.get("/login").text) for b in browsers]
    start = threading.Barrier(count)
    statuses = [0] * count

    def go(i):
        start.wait()
        headers = {"X-Forwarded-For": addresses[i]} if addresses else {}
        statuses[i] = (
            browsers[i]
            .post(
                "/login",
                headers=headers,
                data={"username": TEST_USER, "password": password, "csrf_token": tokens[i]},
            )
            .status_code
        )

    threads = [threading.Thread(target=go, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for b in browsers:
        b.close()
    return statuses


def served_attempts(app, count: int, addresses=None) -> tuple[list[int], int]:
    """attempt_at_once against a real server of `app`: the answers, and the failures counted."""
    server = LiveServer(app).start()
    try:
        statuses = attempt_at_once(server.url, count, addresses=addresses)
    finally:
        server.stop()
    with app.app_context():
        counted = db.session.execute(db.select(db.func.count(LoginFailure.id))).scalar_one()
        db.engine.dispose()
    return statuses, counted


# Argon2 at its production memory cost, so that checks take long enough to overlap.
SLOW_ARGON2 = {
    "ARGON2_TIME_COST": 2,
    "ARGON2_MEMORY_COST": 65536,
    "ARGON2_PARALLELISM": 1,
    "TRUSTED_PROXIES": "127.0.0.1",
}


def test_simultaneous_attempts_check_no_more_passwords_than_the_limit(app_config):
    app = limited_app(app_config, LOGIN_MAX_FAILURES_PER_ACCOUNT=10, LOGIN_CONCURRENT_CHECKS=8)
    statuses, counted = served_attempts(app, 40)
    assert sorted(statuses) == [401] * 10 + [429] * 30
    assert counted == 10


def test_password_checks_at_once_are_bounded_per_process(app_config):
    """8 sign-ins at once, one check at a time."""
    peaks = {}
    for limit in (1, 8):
        app = limited_app(
            app_config, LOGIN_CONCURRENT_CHECKS=limit, LOGIN_CHECK_WAIT=60, **SLOW_ARGON2
        )
        statuses, _ = served_attempts(app, 8, [f"192.0.{limit}.{i}" for i in range(8)])
        assert statuses == [401] * 8
        peaks[limit] = services(app).password_checks.peak
    # Without the bound they do overlap: the measurement can tell.
    assert peaks[1] == 1 and peaks[8] > 1


def test_a_sign_in_that_finds_no_free_check_is_503_and_not_counted(app_config):
    app = limited_app(app_config, LOGIN_CONCURRENT_CHECKS=1, LOGIN_CHECK_WAIT=0.001, **SLOW_ARGON2)
    statuses, counted = served_attempts(app, 6, [f"192.0.2.{i}" for i in range(6)])
    assert 401 in statuses and 503 in statuses and set(statuses) <= {401, 503}
    assert counted == statuses.count(401)


def test_passwords_are_stored_as_argon2id(app):
    create_test_user(app)
    with app.app_context():
        user = db.session.execute(db.select(User)).scalar_one()
        assert user.password_hash.startswith("$argon2id$")
        assert TEST_PASSWORD not in user.password_hash


def test_create_user_command(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-user", "alice", "--password", "a long password"])
    assert result.exit_code == 0 and "user alice created" in result.output
    prompted = runner.invoke(args=["create-user", "bob"], input="another secret\nanother secret\n")
    assert prompted.exit_code == 0, prompted.output
    assert "another secret" not in prompted.output
    short = runner.invoke(args=["create-user", "carol", "--password", "short"])
    assert short.exit_code != 0 and "at least 8" in short.output
    again = runner.invoke(args=["create-user", "alice", "--password", "a long password"])
    assert again.exit_code != 0 and "exists already" in again.output
    changed = runner.invoke(args=["set-password", "bob", "--password", "a new secret"])
    assert changed.exit_code == 0
    browser = app.test_client()
    log_in(app, browser, "bob", "a new secret")
    assert browser.get("/").status_code == 200


def test_ensure_admin_creates_one_user_once_and_prints_the_password(app):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["ensure-admin"])
    assert first.exit_code == 0
    password = re.search(r"password: (\S+)", first.output).group(1)
    assert len(password) >= 16
    second = runner.invoke(args=["ensure-admin"])
    # No second password; how to sign in, and how to set a new password when it is lost.
    assert (
        second.exit_code == 0
        and password not in second.output
        and "password: " not in second.output
    )
    assert (
        "Users exist (admin)" in second.output and "viberwatch set-password admin" in second.output
    )
    browser = app.test_client()
    log_in(app, browser, "admin", password)
    assert browser.get("/").status_code == 200


def test_secret_key_is_generated_into_instance_once(app_config, tmp_path):
    key_file = tmp_path / "secret_key"
    config = {**app_config, "SECRET_KEY": None, "SECRET_KEY_FILE": str(key_file)}
    first = create_app(config)
    with first.app_context():
        db.create_all()
    assert key_file.exists() and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert len(first.secret_key) == 64
    second = create_app(config)
    assert second.secret_key == first.secret_key
    # A sign-in survives the restart.
    create_test_user(first)
    browser = log_in(first, first.test_client())
    cookie = browser.get_cookie("viberwatch_session").value
    restarted = second.test_client()
    restarted.set_cookie("viberwatch_session", cookie)
    assert restarted.get("/").status_code == 200


EXPECTED_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def test_security_headers_everywhere(client, anon_client):
    assert (
        "script-src 'self';" in CONTENT_SECURITY_POLICY
        and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    )
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    responses = [
        anon_client.get("/login"),
        client.get("/"),
        client.get("/api/messages/nope"),
        anon_client.post("/webhooks/viber/dr", data=b"{}", content_type="application/json"),
        anon_client.get("/static/app.css"),
        anon_client.get("/"),
        anon_client.get("/nowhere"),
    ]
    for response in responses:
        for name, value in EXPECTED_HEADERS.items():
            assert response.headers.get(name) == value, (response.request.path, name)
    assert client.get("/").headers["Cache-Control"] == "no-store"


def test_pages_have_no_inline_script_or_style(client):
    for path in ("/", "/conversations", "/rejected"):
        html = client.get(path).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
        assert " style=" not in html and "hx-on" not in html and " on" + "click=" not in html


def ws_handshake(server_url, cookie=None, origin=None) -> int:
    host = urlsplit(server_url).netloc
    conn = http.client.HTTPConnection(host, timeout=5)
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    if cookie:
        headers["Cookie"] = cookie
    if origin:
        headers["Origin"] = origin
    conn.request("GET", "/ws", headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def test_websocket_needs_a_login_and_this_site_as_origin(app, client, live_server):
    assert ws_handshake(live_server.url) == 401
    cookie = f"viberwatch_session={client.get_cookie('viberwatch_session').value}"
    assert ws_handshake(live_server.url, cookie, origin="https://evil.example") == 403
    assert ws_handshake(live_server.url, cookie, origin=live_server.url) == 101


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_instance_folder_and_database_are_private(tmp_path, monkeypatch):
    """Made 0700 and 0600 like the secret key, and closed when an earlier version left them open."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("VIBERWATCH_INSTANCE_PATH", str(tmp_path / "instance"))
    config = {
        "TESTING": True,
        "ARGON2_TIME_COST": 1,
        "ARGON2_MEMORY_COST": 8192,
        "ARGON2_PARALLELISM": 1,
    }
    app = create_app(config)
    database = tmp_path / "instance" / "viberwatch.db"
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{database}"
    with app.app_context():
        db.create_all()
        create_test_user(app)
        assert mode(tmp_path / "instance") == 0o700
        for name in ("viberwatch.db", "viberwatch.db-wal", "viberwatch.db-shm", "secret_key"):
            assert mode(tmp_path / "instance" / name) == 0o600, name
        db.engine.dispose()

    os.chmod(tmp_path / "instance", 0o755)
    os.chmod(database, 0o644)
    again = create_app(config)
    assert mode(tmp_path / "instance") == 0o700 and mode(database) == 0o600
    with again.app_context():
        assert db.session.execute(db.select(db.func.count(User.id))).scalar_one() == 1
        db.engine.dispose()
