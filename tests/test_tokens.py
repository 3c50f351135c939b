"""API tokens: printed once, stored only as a hash, accepted as Bearer by the JSON API (read
and registration, no CSRF token needed), listed and revoked from the command line."""

import hashlib

import httpx

from app.records.models import ApiToken, db

RID = "f6a7d49946094857ae02812969a83056"


def create(app, name="sender") -> str:
    result = app.test_cli_runner().invoke(args=["create-token", name])
    assert result.exit_code == 0, result.output
    # The token is the last line on stdout; the note about it goes to stderr.
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("vw_") and len(token) > 40
    return token


def test_token_is_printed_once_and_only_its_hash_kept(app):
    token = create(app)
    with app.app_context():
        row = db.session.execute(db.select(ApiToken)).scalar_one()
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        stored = " ".join(str(getattr(row, c.key)) for c in ApiToken.__table__.columns)
        assert token not in stored and token[10:] not in stored
    listing = app.test_cli_runner().invoke(args=["list-tokens"])
    assert (
        "sender" in listing.output and token[:10] in listing.output and token not in listing.output
    )


def test_bearer_token_reads_and_registers_over_http(app, live_server):
    token = create(app)
    auth = {"Authorization": f"Bearer {token}"}
    # No session, no CSRF token: a machine's call.
    registered = httpx.post(
        live_server.url + "/api/messages",
        headers=auth,
        json={"requestId": RID, "phone": "79100000030", "text": "hi"},
    )
    assert registered.status_code == 201
    read = httpx.get(f"{live_server.url}/api/messages/{RID}", headers=auth)
    assert read.status_code == 200 and read.json()["phone"] == "79100000030"
    with app.app_context():
        assert db.session.execute(db.select(ApiToken)).scalar_one().last_used_at is not None


def test_bad_tokens_and_schemes_are_refused(app, live_server):
    token = create(app)
    url = f"{live_server.url}/api/messages/{RID}"
    for header in (f"Bearer {token}x", "Bearer", f"Basic {token}", token, "Bearer " + "a" * 5000):
        response = httpx.get(url, headers={"Authorization": header})
        assert response.status_code == 401, header[:20]
        assert response.json()["field"] == "Authorization"


def test_bearer_token_opens_only_the_api(app, live_server):
    token = create(app)
    page = httpx.get(live_server.url + "/", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 302 and "/login" in page.headers["Location"]


def test_revoke_by_name_and_by_id(app, live_server):
    first, second = create(app, "first"), create(app, "second")
    url = f"{live_server.url}/api/messages/{RID}"
    runner = app.test_cli_runner()
    revoked = runner.invoke(args=["revoke-token", "first"])
    assert revoked.exit_code == 0 and "revoked token 1 (first)" in revoked.output
    assert httpx.get(url, headers={"Authorization": f"Bearer {first}"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {second}"}).status_code == 404
    assert runner.invoke(args=["revoke-token", "2"]).exit_code == 0
    assert httpx.get(url, headers={"Authorization": f"Bearer {second}"}).status_code == 401
    missing = runner.invoke(args=["revoke-token", "first"])
    assert missing.exit_code != 0 and "no active token" in missing.output
    listing = runner.invoke(args=["list-tokens"]).output
    assert listing.count("revoked") == 2


def test_token_name_is_required(app):
    result = app.test_cli_runner().invoke(args=["create-token", "   "])
    assert result.exit_code != 0 and "token name" in result.output
