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


def test_a_number_is_an_id_when_a_live_token_has_it_else_a_name(app, live_server):
    """A token named with digits can be revoked by its name; `--name` reads the number as a
    name even when a token has that id; a number past any id is a name, not an error."""
    url = f"{live_server.url}/api/messages/{RID}"
    one = create(app, "one")  # id 1
    named_one = create(app, "1")  # id 2, named "1"
    named_seven = create(app, "7")  # id 3: no token has id 7
    huge = "1" + "0" * 30
    named_huge = create(app, huge)  # id 4
    runner = app.test_cli_runner()

    def live(token: str) -> bool:
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 404

    by_name = runner.invoke(args=["revoke-token", "1", "--name"])
    assert by_name.exit_code == 0 and "revoked token 2 (1)" in by_name.output
    assert live(one) and not live(named_one)
    seven = runner.invoke(args=["revoke-token", "7"])
    assert seven.exit_code == 0 and "revoked token 3 (7)" in seven.output
    big = runner.invoke(args=["revoke-token", huge])
    assert big.exit_code == 0 and f"revoked token 4 ({huge})" in big.output
    assert not live(named_seven) and not live(named_huge)
    by_id = runner.invoke(args=["revoke-token", "1"])
    assert by_id.exit_code == 0 and "revoked token 1 (one)" in by_id.output
    gone = runner.invoke(args=["revoke-token", "1", "--name"])
    assert gone.exit_code != 0 and "no active token with name '1'" in gone.output


def test_the_page_revokes_by_id_only(app):
    """The page's revoke names a token by id: a revoked token's id never reaches a live token
    whose name is that number."""
    from app.auth import tokens

    create(app, "first")  # id 1
    create(app, "1")  # id 2, named "1"
    with app.app_context():
        assert [t.id for t in tokens.revoke_token("1", by="id")] == [1]
        assert tokens.revoke_token("1", by="id") == []
        assert [t.id for t in tokens.revoke_token("1")] == [2]


def test_token_name_is_required(app):
    result = app.test_cli_runner().invoke(args=["create-token", "   "])
    assert result.exit_code != 0 and "token name" in result.output
