"""The CSV export for scripts: an API token (`Authorization: Bearer`) opens /export.csv, both
kinds, with the page's filters, as it opens the JSON API; a bad or revoked token is a 401 in
JSON naming the header, never a redirect; a browser without a session is still sent to sign
in; and a token opens no other page. Real HTTP against a real server and database."""

import csv
import io

import httpx
import pytest

from app.auth import tokens
from app.dashboard.export import MESSAGE_COLUMNS, REPLY_COLUMNS
from app.records.models import ApiToken, db
from support.dashboard_data import receipt, register, reply

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def rows(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/csv")
    assert response.content.startswith("\ufeff".encode())
    return list(csv.DictReader(io.StringIO(response.content.decode()[1:])))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def data(client):
    """Two messages, one failed, and a reply to the other; made through the webhooks and API."""
    register(client, "tok-1", "79100000001", text="hello")
    receipt(client, "tok-1", "delivered")
    reply(client, "tok-1", "79100000001", text="thanks")
    register(client, "tok-2", "79100000002", text="code 1234")
    receipt(client, "tok-2", "failed")


def refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["field"] == "Authorization" and reason in response.json()["reason"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_exports_messages_and_replies_with_the_filters(data, live_server, api_token):
    with httpx.Client(base_url=live_server.url, headers=bearer(api_token)) as http:
        everything = http.get("/export.csv")
        assert [r["request_id"] for r in rows(everything)] == ["tok-2", "tok-1"]
        assert list(rows(everything)[0]) == list(MESSAGE_COLUMNS)
        assert "attachment" in everything.headers["Content-Disposition"]
        # A machine's call: no session cookie is made for it.
        assert "Set-Cookie" not in everything.headers
        failed = rows(http.get("/export.csv", params={"status": "failed"}))
        assert [(r["request_id"], r["status"], r["code"]) for r in failed] == [
            ("tok-2", "failed", "9002")
        ]
        replies = http.get("/export.csv", params={"kind": "replies"})
        assert [(r["trace_request_id"], r["text"]) for r in rows(replies)] == [("tok-1", "thanks")]
        assert list(rows(replies)[0]) == list(REPLY_COLUMNS)
        assert (
            rows(http.get("/export.csv", params={"kind": "replies", "phone": "79100000002"})) == []
        )
        # A bad argument is the export's own 400, as with a session.
        bad = http.get("/export.csv", params={"code": "x"})
        assert bad.status_code == 400 and bad.json()["field"] == "code"


def test_the_token_is_noted_as_used(app, data, live_server, api_token):
    assert httpx.get(live_server.url + "/export.csv", headers=bearer(api_token)).status_code == 200
    with app.app_context():
        assert db.session.execute(db.select(ApiToken)).scalar_one().last_used_at is not None


def test_bad_and_revoked_tokens_are_refused_in_json(app, data, live_server, api_token):
    url = live_server.url + "/export.csv"
    for header in (
        f"Bearer {api_token}x",
        "Bearer",
        f"bearer  {api_token[:-1]}",
        "Bearer " + "a" * 5000,
    ):
        for kind in ("messages", "replies"):
            refused(
                httpx.get(url, params={"kind": kind}, headers={**BROWSER, "Authorization": header}),
                "unknown or revoked token",
            )
    # A stolen token stops working the moment it is revoked, mid-use.
    assert httpx.get(url, headers=bearer(api_token)).status_code == 200
    with app.app_context():
        assert [t.name for t in tokens.revoke_token("tests")] == ["tests"]
    refused(httpx.get(url, headers=bearer(api_token)), "unknown or revoked token")
    refused(httpx.get(url, params={"kind": "replies"}, headers=bearer(api_token)), "revoked")


def test_a_bad_token_is_refused_even_beside_a_session(client, data, api_token):
    """The token is what a bearer call is judged by; a session cookie does not rescue it."""
    response = client.get("/export.csv", headers={"Authorization": f"Bearer {api_token}x"})
    assert response.status_code == 401 and response.get_json()["field"] == "Authorization"
    assert client.get("/export.csv", headers=bearer(api_token)).status_code == 200


def test_without_a_token_browsers_are_sent_to_sign_in_and_machines_get_401(data, live_server):
    url = live_server.url + "/export.csv?kind=replies"
    browser = httpx.get(url, headers=BROWSER)
    assert browser.status_code == 302
    assert browser.headers["Location"].startswith("/login?next=")
    assert "export.csv" in browser.headers["Location"]
    machine = httpx.get(url, headers={"Accept": "application/json"})
    assert machine.status_code == 401 and machine.json()["field"] == "login"
    assert "Location" not in machine.headers


def test_another_scheme_leaves_the_session_to_decide(client, data, live_server):
    """A reverse proxy's Basic login passed through is not a token: the signed-in browser
    still gets its file, and one not signed in is still sent to sign in."""
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert client.get("/export.csv", headers=basic).status_code == 200
    anonymous = httpx.get(live_server.url + "/export.csv", headers={**BROWSER, **basic})
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/messages/tok-1",
        "/conversations",
        "/conversations/79100000001",
        "/rejected",
        "/analytics",
        "/analytics/data.json",
        "/alerts",
        "/campaigns",
    ],
)
def test_a_token_opens_no_page(data, live_server, api_token, path):
    response = httpx.get(live_server.url + path, headers={**BROWSER, **bearer(api_token)})
    assert response.status_code in (302, 401), (path, response.status_code)
    if response.status_code == 302:
        assert response.headers["Location"].startswith("/login")
    # Nothing of the record: at most the redirect's own link back to the page.
    assert "thanks" not in response.text and "delivered" not in response.text


@pytest.mark.parametrize("path", ["/rejected/1/reprocess", "/conversations/79100000001/send"])
def test_a_token_reaches_no_form(data, live_server, api_token, path):
    """No CSRF token is asked of a bearer call, so a bearer call must not reach a form."""
    response = httpx.post(
        live_server.url + path, data={"text": "hi"}, headers={**BROWSER, **bearer(api_token)}
    )
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
