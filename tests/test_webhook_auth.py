"""Webhook authentication through real HTTP: URL token, NXCLOUD signature with replay window,
source networks with trusted proxies, each alone and combined; refused bodies are kept
(or, in a flood, counted) and nothing of them is applied."""

import time
from datetime import UTC, datetime

import httpx
import pytest

from app import create_app
from app.core.signing import sign
from app.records.models import Message, RawBody, RefusedTally, db
from app.webhooks import checks
from support.accounts import create_test_user, log_in
from support.fixtures import fixture_bytes
from support.servers import LiveServer

DR = "/webhooks/viber/dr"
REPLY = "/webhooks/viber/message"
JSON = {"Content-Type": "application/json"}
ACCESS_KEY, SECRET = "fme2na3kdi3ki", "abciiiko2k3"
BODY = fixture_bytes("dr_delivered")


@pytest.fixture
def serve(app_config):
    """Start a real server for an app built with extra settings."""
    servers = []

    def start(**settings):
        app = create_app({**app_config, **settings})
        with app.app_context():
            db.create_all()
        server = LiveServer(app).start()
        server.app = app
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        with server.app.app_context():
            db.session.remove()
            db.engine.dispose()


def signed(
    body: bytes, ts=None, secret=SECRET, key=ACCESS_KEY, action="dr", biz_type="7", **override
) -> dict:
    ts = str(int(time.time() * 1000)) if ts is None else str(ts)
    headers = {**JSON, "accessKey": key, "ts": ts, "bizType": biz_type, "action": action}
    headers["sign"] = sign(key, action, biz_type, ts, body, secret)
    headers.update(override)
    return headers


def rows(server):
    with server.app.app_context():
        raws = db.session.execute(db.select(RawBody).order_by(RawBody.id)).scalars().all()
        messages = db.session.execute(db.select(db.func.count(Message.request_id))).scalar_one()
        db.session.expunge_all()
        return raws, messages


def assert_refused(server, response, status, field, applied=0):
    assert response.status_code == status
    error = response.json()
    assert error["field"] == field and error["reason"] and error["error"].startswith(field)
    raws, messages = rows(server)
    assert raws[-1].outcome == "refused" and raws[-1].http_status == status
    assert raws[-1].body == BODY and field in raws[-1].reason
    assert messages == applied


def test_open_by_default_applies_bodies(serve):
    server = serve()
    response = httpx.post(server.url + DR, content=BODY, headers=JSON)
    assert response.status_code == 200 and response.text == "success"
    assert rows(server)[1] == 1


def test_token_alone(serve):
    server = serve(WEBHOOK_TOKEN="s3cret-token")
    assert_refused(server, httpx.post(server.url + DR, content=BODY, headers=JSON), 401, "token")
    assert_refused(
        server,
        httpx.post(server.url + DR + "?token=wrong", content=BODY, headers=JSON),
        401,
        "token",
    )
    ok = httpx.post(server.url + DR + "?token=s3cret-token", content=BODY, headers=JSON)
    assert ok.status_code == 200
    assert rows(server)[1] == 1


def test_numeric_token_from_the_environment(serve, monkeypatch):
    # VIBERWATCH_ values are parsed as JSON, so this token arrives as an int.
    monkeypatch.setenv("VIBERWATCH_WEBHOOK_TOKEN", "123456")
    server = serve()
    assert (
        httpx.post(server.url + DR + "?token=123456", content=BODY, headers=JSON).status_code == 200
    )
    assert httpx.post(server.url + DR, content=BODY, headers=JSON).status_code == 401


def test_webhook_urls_carry_the_token(serve):
    server = serve(WEBHOOK_TOKEN="tok/en+1")
    result = server.app.test_cli_runner().invoke(
        args=["urls", "--host", "example.org", "--port", "80"]
    )
    assert "http://example.org/webhooks/viber/dr?token=tok/en%2B1" in result.output
    assert "http://example.org/webhooks/viber/message?token=tok/en%2B1" in result.output
    url = result.output.split()[1]
    assert (
        httpx.post(
            url.replace("http://example.org", server.url), content=BODY, headers=JSON
        ).status_code
        == 200
    )


def test_documented_signature_vector_verifies():
    settings = checks.Settings(
        sign_access_key=ACCESS_KEY,
        sign_secret=SECRET,
        sign_biz_type="1",
        sign_actions={"dr": "send", "message": "message"},
    )
    headers = {
        "accessKey": ACCESS_KEY,
        "ts": "1655710885431",
        "bizType": "1",
        "action": "send",
        "sign": "87c3560d3331ae23f1021e2025722354",
    }
    body = '{"name":"牛小信","id":10001}'.encode()
    at = datetime.fromtimestamp(1655710885.431, UTC)
    assert checks.check_signature(settings, "dr", headers, body, now=at) is None
    tampered = body.replace(b"10001", b"10002")
    assert checks.check_signature(settings, "dr", headers, tampered, now=at).field == "sign"
    # The same genuine signature, on the webhook it was not made for.
    assert checks.check_signature(settings, "message", headers, body, now=at).field == "action"


def test_a_signature_made_for_the_other_webhook_or_product_is_refused(serve):
    server = serve(WEBHOOK_SIGN_ACCESS_KEY=ACCESS_KEY, WEBHOOK_SIGN_SECRET=SECRET)
    reply_body = fixture_bytes("reply_text")
    as_reply = httpx.post(server.url + DR, content=BODY, headers=signed(BODY, action="message"))
    assert_refused(server, as_reply, 401, "action")
    assert "'message'" in as_reply.json()["reason"] and "'dr'" in as_reply.json()["reason"]
    assert_refused(
        server,
        httpx.post(server.url + DR, content=BODY, headers=signed(BODY, action="mt")),
        401,
        "action",
    )
    assert_refused(
        server,
        httpx.post(server.url + DR, content=BODY, headers=signed(BODY, biz_type="1")),
        401,
        "bizType",
    )
    ok = httpx.post(
        server.url + REPLY, content=reply_body, headers=signed(reply_body, action="message")
    )
    assert ok.status_code == 200
    assert httpx.post(server.url + DR, content=BODY, headers=signed(BODY)).status_code == 200


def test_a_replayed_signature_is_refused_within_the_window(serve):
    server = serve(WEBHOOK_SIGN_ACCESS_KEY=ACCESS_KEY, WEBHOOK_SIGN_SECRET=SECRET)
    headers = signed(BODY)
    assert httpx.post(server.url + DR, content=BODY, headers=headers).status_code == 200
    replay = httpx.post(server.url + DR, content=BODY, headers=headers)
    assert replay.status_code == 401 and replay.json()["field"] == "sign"
    assert "replay" in replay.json()["reason"]
    raws, messages = rows(server)
    assert [r.outcome for r in raws] == ["accepted", "refused"] and messages == 1
    # The sender's own retry is signed afresh (another ts) and is taken.
    again = httpx.post(
        server.url + DR, content=BODY, headers=signed(BODY, ts=int(headers["ts"]) + 1)
    )
    assert again.status_code == 200
    # Reprocessing the refused replay checks it again: still a replay.
    assert (
        "1 refused"
        in server.app.test_cli_runner().invoke(args=["reprocess", "--include-refused"]).output
    )
    assert rows(server)[0][1].outcome == "refused"


def test_the_token_may_come_in_a_header(serve):
    server = serve(WEBHOOK_TOKEN="s3cret-token")
    ok = httpx.post(
        server.url + DR, content=BODY, headers={**JSON, "X-Webhook-Token": "s3cret-token"}
    )
    assert ok.status_code == 200
    assert_refused(
        server,
        httpx.post(server.url + DR, content=BODY, headers={**JSON, "X-Webhook-Token": "wrong"}),
        401,
        "token",
        applied=1,
    )
    raws, _ = rows(server)
    assert "s3cret-token" not in raws[0].headers and "wrong" not in raws[1].headers


def test_signature_alone(serve):
    server = serve(WEBHOOK_SIGN_ACCESS_KEY=ACCESS_KEY, WEBHOOK_SIGN_SECRET=SECRET)
    assert_refused(server, httpx.post(server.url + DR, content=BODY, headers=JSON), 401, "sign")
    assert_refused(
        server,
        httpx.post(server.url + DR, content=BODY, headers=signed(BODY, secret="nope")),
        401,
        "sign",
    )
    assert_refused(
        server,
        httpx.post(server.url + DR, content=BODY, headers=signed(BODY, key="other", secret=SECRET)),
        401,
        "accessKey",
    )
    # The signature covers the body: the same headers with another body fail.
    other = BODY.replace(b"delivered", b"seen")
    response = httpx.post(server.url + DR, content=other, headers=signed(BODY))
    assert response.status_code == 401 and response.json()["field"] == "sign"
    ok = httpx.post(server.url + DR, content=BODY, headers=signed(BODY))
    assert ok.status_code == 200 and rows(server)[1] == 1


def test_old_or_future_ts_is_refused_as_replay(serve):
    server = serve(
        WEBHOOK_SIGN_ACCESS_KEY=ACCESS_KEY, WEBHOOK_SIGN_SECRET=SECRET, WEBHOOK_SIGN_WINDOW=60
    )
    now = int(time.time() * 1000)
    assert_refused(
        server,
        httpx.post(server.url + DR, content=BODY, headers=signed(BODY, ts=now - 3_600_000)),
        401,
        "ts",
    )
    assert_refused(
        server,
        httpx.post(server.url + DR, content=BODY, headers=signed(BODY, ts=now + 3_600_000)),
        401,
        "ts",
    )
    assert_refused(
        server,
        httpx.post(server.url + DR, content=BODY, headers=signed(BODY, ts="soon")),
        401,
        "ts",
    )
    assert "60 s" in rows(server)[0][0].reason


def test_half_configured_signature_is_a_startup_error(app_config):
    with pytest.raises(ValueError, match="go together"):
        create_app({**app_config, "WEBHOOK_SIGN_SECRET": SECRET})


def test_networks_alone(serve):
    server = serve(WEBHOOK_ALLOW_NETWORKS="10.0.0.0/8, 192.168.0.0/16")
    assert_refused(server, httpx.post(server.url + DR, content=BODY, headers=JSON), 403, "source")
    # Without TRUSTED_PROXIES a forwarded address is not believed.
    assert_refused(
        server,
        httpx.post(server.url + DR, content=BODY, headers={**JSON, "X-Forwarded-For": "10.1.2.3"}),
        403,
        "source",
    )
    allowed = serve(WEBHOOK_ALLOW_NETWORKS=["127.0.0.0/8"])
    assert httpx.post(allowed.url + DR, content=BODY, headers=JSON).status_code == 200


def test_forwarded_for_honoured_only_from_trusted_proxies(serve):
    server = serve(WEBHOOK_ALLOW_NETWORKS="10.0.0.0/8", TRUSTED_PROXIES="127.0.0.1")
    ok = httpx.post(server.url + DR, content=BODY, headers={**JSON, "X-Forwarded-For": "10.1.2.3"})
    assert ok.status_code == 200
    # A client cannot prepend its own hop: the right-most untrusted address counts.
    spoofed = httpx.post(
        server.url + DR, content=BODY, headers={**JSON, "X-Forwarded-For": "10.9.9.9, 203.0.113.5"}
    )
    assert spoofed.status_code == 403 and "203.0.113.5" in spoofed.json()["reason"]
    raws, _ = rows(server)
    assert raws[0].remote_addr == "10.1.2.3" and raws[1].remote_addr == "203.0.113.5"


def test_all_three_combined(serve):
    server = serve(
        WEBHOOK_TOKEN="t0ken",
        WEBHOOK_SIGN_ACCESS_KEY=ACCESS_KEY,
        WEBHOOK_SIGN_SECRET=SECRET,
        WEBHOOK_ALLOW_NETWORKS="127.0.0.1/32",
    )
    url = server.url + DR
    assert_refused(server, httpx.post(url, content=BODY, headers=signed(BODY)), 401, "token")
    assert_refused(
        server, httpx.post(url + "?token=t0ken", content=BODY, headers=JSON), 401, "sign"
    )
    ok = httpx.post(url + "?token=t0ken", content=BODY, headers=signed(BODY))
    assert ok.status_code == 200
    other = serve(
        WEBHOOK_TOKEN="t0ken",
        WEBHOOK_SIGN_ACCESS_KEY=ACCESS_KEY,
        WEBHOOK_SIGN_SECRET=SECRET,
        WEBHOOK_ALLOW_NETWORKS="10.0.0.0/8",
    )
    # Same database: the message applied above is still the only one.
    assert_refused(
        other,
        httpx.post(other.url + DR + "?token=t0ken", content=BODY, headers=signed(BODY)),
        403,
        "source",
        applied=1,
    )


def test_reply_webhook_is_guarded_too(serve):
    server = serve(WEBHOOK_TOKEN="t0ken")
    body = fixture_bytes("reply_text")
    assert httpx.post(server.url + REPLY, content=body, headers=JSON).status_code == 401
    assert (
        httpx.post(server.url + REPLY + "?token=t0ken", content=body, headers=JSON).status_code
        == 200
    )


def reprocess_on_page(app, raw_id: int):
    """The /rejected page's Reprocess button, pressed by a signed-in operator."""
    create_test_user(app)
    client = log_in(app, app.test_client())
    page = client.get("/rejected").get_data(as_text=True)
    assert f'id="raw-{raw_id}"' in page
    return client.post(f"/rejected/{raw_id}/reprocess", headers={"HX-Request": "true"})


def test_a_forged_body_stays_refused_whoever_reprocesses_it(serve):
    """Refused bodies are re-run through authentication, never around it: not by the page's
    button, not by `reprocess --include-refused`."""
    server = serve(
        WEBHOOK_TOKEN="t0ken", WEBHOOK_SIGN_ACCESS_KEY=ACCESS_KEY, WEBHOOK_SIGN_SECRET=SECRET
    )
    forged = [
        httpx.post(server.url + DR, content=BODY, headers=JSON),
        httpx.post(server.url + DR + "?token=guess", content=BODY, headers=signed(BODY)),
        httpx.post(
            server.url + DR + "?token=t0ken", content=BODY, headers=signed(BODY, secret="guess")
        ),
    ]
    assert [r.status_code for r in forged] == [401, 401, 401]
    raws, _ = rows(server)
    row = reprocess_on_page(server.app, raws[0].id)
    assert row.status_code == 200 and 'data-outcome="refused"' in row.get_data(as_text=True)
    assert "webhook authentication" in row.get_data(as_text=True)
    output = server.app.test_cli_runner().invoke(args=["reprocess", "--include-refused"]).output
    assert "3 refused" in output
    raws, messages = rows(server)
    assert messages == 0 and [r.outcome for r in raws] == ["refused"] * 3
    assert all(r.reprocessed_at is not None for r in raws)
    assert "token: missing" in raws[0].reason and "token: does not match" in raws[1].reason
    assert raws[2].reason.startswith("sign:")


def test_a_refused_body_passes_once_the_configuration_admits_it(serve, app_config):
    """After a configuration change, reprocessing checks what the call presented then."""
    strict = serve(WEBHOOK_ALLOW_NETWORKS="10.0.0.0/8")
    assert (
        httpx.post(strict.url + DR + "?token=new-token", content=BODY, headers=JSON).status_code
        == 403
    )
    old_token = serve(WEBHOOK_TOKEN="old-token")
    assert (
        httpx.post(
            old_token.url + REPLY + "?token=new-token",
            content=fixture_bytes("reply_text"),
            headers=JSON,
        ).status_code
        == 401
    )
    raws, _ = rows(strict)
    assert "new-token" not in raws[1].headers  # only its HMAC is kept
    # The same database, now admitting 127.0.0.1 and with the new token.
    changed = serve(WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8", WEBHOOK_TOKEN="new-token")
    output = changed.app.test_cli_runner().invoke(args=["reprocess", "--include-refused"]).output
    assert "2 accepted" in output
    assert [r.outcome for r in rows(changed)[0]] == ["accepted", "accepted"]


def test_flood_of_refusals_is_counted_not_kept(serve):
    server = serve(WEBHOOK_TOKEN="t0ken", WEBHOOK_REFUSED_KEEP_PER_MINUTE=3)
    for _ in range(7):
        assert httpx.post(server.url + DR, content=BODY, headers=JSON).status_code == 401
    raws, _ = rows(server)
    assert len(raws) == 3
    with server.app.app_context():
        assert db.session.execute(db.select(db.func.sum(RefusedTally.dropped))).scalar_one() == 4
        assert checks.dropped_since(24) == 4
    page = dashboard(server.app)
    assert "4 refused webhook calls" in page and "counted but not kept" in page


def dashboard(app) -> str:
    """The messages page as a signed-in operator sees it."""
    create_test_user(app)
    client = log_in(app, app.test_client())
    response = client.get("/")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_warning_banner_while_webhooks_are_open(serve):
    assert "Webhooks accept unauthenticated calls" in dashboard(serve().app)
    for closed in (
        {"WEBHOOK_TOKEN": "t0ken"},
        {"WEBHOOK_ALLOW_NETWORKS": "127.0.0.1"},
        {"WEBHOOK_SIGN_ACCESS_KEY": ACCESS_KEY, "WEBHOOK_SIGN_SECRET": SECRET},
    ):
        assert "Webhooks accept unauthenticated calls" not in dashboard(serve(**closed).app)


def test_one_client_address_rule_for_every_use(serve):
    """Behind PROXY_FIX, a peer that is not a trusted proxy cannot pick its address by
    X-Forwarded-For: not for the allow-list, the sign-in limit, nor the address kept."""
    from app.auth import tokens

    server = serve(
        PROXY_FIX=1,
        TRUSTED_PROXIES="192.0.2.1",
        WEBHOOK_ALLOW_NETWORKS="10.0.0.0/8",
        LOGIN_MAX_FAILURES_PER_ADDRESS=2,
    )
    forged = {**JSON, "X-Forwarded-For": "10.1.2.3"}
    response = httpx.post(server.url + DR, content=BODY, headers=forged)
    assert response.status_code == 403 and "127.0.0.1" in response.json()["reason"]
    with server.app.app_context():
        token = tokens.create_token("t")[1]
    api = httpx.post(
        server.url + "/api/messages",
        json={"requestId": "r", "phone": "1"},
        headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "203.0.113.9"},
    )
    assert api.status_code == 201
    raws, _ = rows(server)
    assert [r.remote_addr for r in raws] == ["127.0.0.1", "127.0.0.1"]
    create_test_user(server.app)
    with httpx.Client(base_url=server.url) as browser:
        statuses = []
        for i in range(4):
            page = browser.get("/login")
            token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
            statuses.append(
                browser.post(
                    "/login",
                    data={"username": f"guess{i}", "password": "x", "csrf_token": token},
                    headers={"X-Forwarded-For": f"198.51.100.{i}"},
                ).status_code
            )
    assert statuses == [401, 401, 429, 429]
