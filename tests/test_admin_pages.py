"""The administrator's pages and My account, through the real forms: users (create with a
role, a generated password shown once, refusals that name the problem and change nothing,
roles, the last admin, disable and enable, password reset, ending sign-ins, last sign-in),
API tokens (scopes, a secret shown once, last use, revoke), the account page (own password,
own sign-ins) and the audit log (filters, keyset pages, the CSV export, no way to edit)."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func

from app.core.times import utcnow
from app.records.models import ApiToken, AuditRecord, LoginFailure, User, UserSession, db
from support.accounts import TEST_PASSWORD, TEST_USER, create_test_user, log_in, login_form_token
from support.audit_log import count, entries, user_id
from support.bodies import REGISTER, post_json, registration
from support.fake_nxcloud import ACCESS_KEY, APPKEY, SECRET, documented_sign, nxcloud_config

ADMIN = TEST_USER  # the signed-in admin of the `client` fixture
PASSWORD = "alice long password 1"
NEW_PASSWORD = "a brand new password"
SECRET_VALUE = re.compile(r'id="secret-value">([^<]+)</code>')
FORM_ERROR = re.compile(r'id="form-error">([^<]+)</p>')
DONE = re.compile(r'id="done">([^<]+)</p>')
WRONG = "Unknown username or wrong password."
DISABLED = "This account is disabled. Ask an administrator."


def html_of(response) -> str:
    return response.get_data(as_text=True)


def form_error(response) -> str:
    found = FORM_ERROR.search(html_of(response))
    assert found, html_of(response)
    return html.unescape(found.group(1))


def secret_of(response) -> str | None:
    found = SECRET_VALUE.search(html_of(response))
    return found.group(1) if found else None


def user_row(client, uid: int) -> str:
    page = html_of(client.get("/admin/users"))
    return re.search(rf'<tr id="user-{uid}".*?</tr>', page, re.S).group(0)


def users_in_db(app) -> dict[str, tuple[str, bool]]:
    """Every user: (role, disabled)."""
    with app.app_context():
        return {
            u.username: (u.role, u.disabled_at is not None)
            for u in db.session.execute(db.select(User)).scalars()
        }


def sign_in(app, username: str, password: str, client=None):
    """A sign-in through the login form: the answer, whatever it is."""
    client = client or app.test_client()
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": login_form_token(client)},
    )


def signed_out(client) -> bool:
    """Whether the client's next request is sent to sign in."""
    answer = client.get("/account")
    return answer.status_code == 302 and "/login" in answer.headers["Location"]


def alice(app, role: str = "viewer") -> int:
    create_test_user(app, "alice", PASSWORD, role=role)
    return user_id(app, "alice")


# Users: creating one.


def test_a_user_made_without_a_password_gets_one_shown_once(app, client):
    made = client.post("/admin/users", data={"username": "bob", "role": "operator"})
    assert made.status_code == 200
    assert DONE.search(html_of(made)).group(1) == "User bob created (operator)."
    password = secret_of(made)
    assert password and len(password) >= 16
    assert "Password of bob" in html_of(made)
    assert made.headers["Cache-Control"] == "no-store"
    # The form sent again (a reload of that answer) makes no second user and shows nothing.
    again = client.post("/admin/users", data={"username": "bob", "role": "operator"})
    assert again.status_code == 400 and "exists already" in form_error(again)
    assert secret_of(again) is None and password not in html_of(again)
    reloaded = client.get("/admin/users")
    assert secret_of(reloaded) is None and password not in html_of(reloaded)
    assert 'data-username="bob" data-role="operator" data-disabled="false"' in html_of(reloaded)
    bob = log_in(app, app.test_client(), "bob", password)
    assert bob.get("/account").status_code == 200
    assert '<strong id="my-role">operator</strong>' in html_of(bob.get("/account"))


def test_a_typed_password_is_not_shown(app, client):
    made = client.post(
        "/admin/users", data={"username": "bob", "role": "viewer", "password": PASSWORD}
    )
    assert made.status_code == 200
    assert 'id="secret"' not in html_of(made) and PASSWORD not in html_of(made)
    assert users_in_db(app)["bob"] == ("viewer", False)
    assert log_in(app, app.test_client(), "bob", PASSWORD).get("/account").status_code == 200


@pytest.mark.parametrize(
    "form, problem",
    [
        ({"username": "", "role": "viewer"}, "username must be 1 to 64 printable characters"),
        ({"username": "b" * 65, "role": "viewer"}, "username must be 1 to 64 printable"),
        ({"username": "bell\x07", "role": "viewer"}, "username must be 1 to 64 printable"),
        ({"username": "bob", "role": "viewer", "password": "short"}, "at least 8 characters"),
        ({"username": "bob", "role": "root", "password": PASSWORD}, "role must be one of"),
        ({"username": "bob", "password": PASSWORD}, "role must be one of"),
        ({"username": ADMIN, "role": "viewer", "password": PASSWORD}, "exists already"),
    ],
)
def test_a_refused_user_answers_400_naming_the_problem_and_makes_nothing(
    app, client, form, problem
):
    before, records = users_in_db(app), count(app)
    refused = client.post("/admin/users", data=form)
    assert refused.status_code == 400
    assert problem in form_error(refused)
    assert secret_of(refused) is None
    assert PASSWORD not in html_of(refused)
    assert users_in_db(app) == before and count(app) == records


# Users: roles and the last admin.


def test_a_role_change_takes_effect_on_the_users_next_request(app, client):
    uid = alice(app)
    browser = log_in(app, app.test_client(), "alice", PASSWORD)
    assert browser.get("/export.csv").status_code == 403
    changed = client.post(f"/admin/users/{uid}/role", data={"role": "operator"})
    assert changed.status_code == 303
    page = client.get(changed.headers["Location"])
    assert DONE.search(html_of(page)).group(1) == "alice: viewer → operator."
    assert 'data-username="alice" data-role="operator"' in html_of(page)
    assert browser.get("/export.csv").status_code == 200
    unknown = client.post(f"/admin/users/{uid}/role", data={"role": "owner"})
    assert unknown.status_code == 400 and "role must be one of" in form_error(unknown)
    assert users_in_db(app)["alice"] == ("operator", False)


def test_choosing_the_role_a_user_has_changes_nothing_and_says_so(app, client):
    uid = alice(app, role="operator")
    records = count(app)
    same = client.post(f"/admin/users/{uid}/role", data={"role": "operator"})
    assert same.status_code == 303
    page = client.get(same.headers["Location"])
    assert DONE.search(html_of(page)).group(1) == "alice is already operator."
    assert users_in_db(app)["alice"] == ("operator", False) and count(app) == records


def test_the_last_admin_can_be_neither_demoted_nor_disabled(app, client):
    uid = user_id(app, ADMIN)
    alice(app, role="admin")
    client.post(f"/admin/users/{user_id(app, 'alice')}/disable")  # an admin, but disabled
    before, records = users_in_db(app), count(app)
    demoted = client.post(f"/admin/users/{uid}/role", data={"role": "operator"})
    assert demoted.status_code == 400 and "is the last admin" in form_error(demoted)
    disabled = client.post(f"/admin/users/{uid}/disable")
    assert disabled.status_code == 400 and "is the last admin" in form_error(disabled)
    assert users_in_db(app) == before and count(app) == records
    assert client.get("/admin/users").status_code == 200
    # With a second active admin, the first may step down.
    client.post(f"/admin/users/{user_id(app, 'alice')}/enable")
    assert client.post(f"/admin/users/{uid}/role", data={"role": "viewer"}).status_code == 303
    assert users_in_db(app)[ADMIN] == ("viewer", False)
    assert client.get("/admin/users").status_code == 403


@pytest.mark.parametrize("change", ["demote", "disable"])
def test_two_admins_stepping_down_at_once_leave_one_admin(app, client, change):
    """alice's own change is under way (written, not committed) when the other admin makes
    theirs: theirs waits for hers and is then refused, so an active admin remains."""
    uid = user_id(app, ADMIN)
    alice(app, role="admin")
    path, form = {
        "demote": (f"/admin/users/{uid}/role", {"role": "viewer"}),
        "disable": (f"/admin/users/{uid}/disable", {}),
    }[change]
    answers = []
    with app.app_context():
        with db.engine.connect() as hers:
            hers.execute(db.update(User).where(User.username == "alice").values(role="viewer"))
            theirs = threading.Thread(target=lambda: answers.append(client.post(path, data=form)))
            theirs.start()
            theirs.join(timeout=1.0)
            hers.commit()
    theirs.join(timeout=30)
    (answer,) = answers
    assert answer.status_code == 400 and "is the last admin" in form_error(answer)
    assert users_in_db(app) == {ADMIN: ("admin", False), "alice": ("viewer", False)}


def test_without_any_admin_the_commands_still_change_and_disable_others(app):
    runner = app.test_cli_runner()
    for name in ("bob", "carol"):
        made = runner.invoke(args=["create-user", name, "--password", PASSWORD])
        assert made.exit_code == 0, made.output
    disabled = runner.invoke(args=["disable-user", "bob"])
    assert disabled.exit_code == 0, disabled.output
    changed = runner.invoke(args=["set-role", "carol", "operator"])
    assert changed.exit_code == 0, changed.output
    assert users_in_db(app) == {"bob": ("viewer", True), "carol": ("operator", False)}
    # Made an admin, then carol is the one who must stay.
    assert runner.invoke(args=["set-role", "carol", "admin"]).exit_code == 0
    last = runner.invoke(args=["set-role", "carol", "viewer"])
    assert last.exit_code == 1 and "carol is the last admin" in last.output


# Users: disable, enable, reset, end sign-ins, last sign-in.


def test_a_disabled_user_is_refused_at_once_and_told_only_after_the_right_password(app, client):
    uid = alice(app)
    browser = log_in(app, app.test_client(), "alice", PASSWORD)
    assert browser.get("/account").status_code == 200
    disabled = client.post(f"/admin/users/{uid}/disable")
    assert disabled.status_code == 303
    assert DONE.search(html_of(client.get(disabled.headers["Location"]))).group(1) == (
        "alice disabled; 1 sign-in(s) ended."
    )
    assert signed_out(browser)
    right = sign_in(app, "alice", PASSWORD)
    assert right.status_code == 403 and DISABLED in html_of(right)
    wrong = sign_in(app, "alice", "not her password")
    assert wrong.status_code == 401 and WRONG in html_of(wrong)
    assert "disabled" not in html_of(wrong)
    assert users_in_db(app)["alice"] == ("viewer", True)
    assert 'data-disabled="true"' in user_row(client, uid)
    enabled = client.post(f"/admin/users/{uid}/enable")
    assert enabled.status_code == 303
    assert 'data-disabled="false"' in user_row(client, uid)
    again = log_in(app, app.test_client(), "alice", PASSWORD)
    assert again.get("/account").status_code == 200


def test_a_password_reset_shows_the_new_one_once_and_ends_the_users_sign_ins(app, client):
    uid = alice(app)
    browser = log_in(app, app.test_client(), "alice", PASSWORD)
    reset = client.post(f"/admin/users/{uid}/password")
    assert reset.status_code == 200
    new = secret_of(reset)
    assert new and "New password of alice" in html_of(reset)
    assert secret_of(client.get("/admin/users")) is None
    assert new not in html_of(client.get("/admin/users"))
    assert signed_out(browser)
    assert sign_in(app, "alice", PASSWORD).status_code == 401
    assert log_in(app, app.test_client(), "alice", new).get("/account").status_code == 200


def test_ending_a_users_sign_ins_signs_out_every_browser_of_theirs(app, client):
    uid = alice(app)
    browsers = [log_in(app, app.test_client(), "alice", PASSWORD) for _ in range(2)]
    assert '<td data-label="Sign-ins open" class="num">2</td>' in user_row(client, uid)
    ended = client.post(f"/admin/users/{uid}/sessions/end")
    assert ended.status_code == 303
    page = client.get(ended.headers["Location"])
    assert DONE.search(html_of(page)).group(1) == "2 sign-in(s) of alice ended."
    assert all(signed_out(b) for b in browsers)
    assert '<td data-label="Sign-ins open" class="num">0</td>' in user_row(client, uid)
    assert client.get("/admin/users").status_code == 200  # the admin's own stays
    assert log_in(app, app.test_client(), "alice", PASSWORD).get("/account").status_code == 200


def test_sign_ins_past_their_age_are_not_counted_open(app, client):
    uid = alice(app)
    browsers = [log_in(app, app.test_client(), "alice", PASSWORD) for _ in range(2)]
    assert '<td data-label="Sign-ins open" class="num">2</td>' in user_row(client, uid)
    with app.app_context():
        oldest = utcnow() - timedelta(seconds=app.config["LOGIN_MAX_AGE"] + 60)
        first = db.session.execute(
            db.select(UserSession.id)
            .where(UserSession.user_id == uid)
            .order_by(UserSession.created_at)
            .limit(1)
        ).scalar_one()
        db.session.execute(
            db.update(UserSession).where(UserSession.id == first).values(created_at=oldest)
        )
        db.session.commit()
    assert [signed_out(b) for b in browsers] == [True, False]
    assert '<td data-label="Sign-ins open" class="num">1</td>' in user_row(client, uid)


def test_the_last_sign_in_time_and_address_are_shown(app, client):
    uid = alice(app)
    assert 'data-label="Last sign-in"><span class="muted">never</span>' in user_row(client, uid)
    browser = app.test_client()
    browser.environ_base["REMOTE_ADDR"] = "198.51.100.4"
    log_in(app, browser, "alice", PASSWORD)
    row = user_row(client, uid)
    shown = re.search(r'data-label="Last sign-in"><time datetime="([^"]+)"', row).group(1)
    at = datetime.fromisoformat(shown.replace("Z", "+00:00"))
    assert abs(at - datetime.now(UTC)) < timedelta(minutes=1)
    assert '<span class="muted small">from 198.51.100.4</span>' in row


# API tokens.


@pytest.fixture
def proxy(app_config, fake_nxcloud):
    app_config.update(nxcloud_config(fake_nxcloud))


def new_token(client, name: str, *scopes: str) -> str:
    made = client.post("/admin/tokens", data={"name": name, "scope": list(scopes)})
    assert made.status_code == 200, html_of(made)
    assert f"Token {name}" in html_of(made)
    return secret_of(made)


SEND = "/nxcloud/api/viber/mt"


def send_body() -> bytes:
    return json.dumps(
        {
            "appkey": APPKEY,
            "phone": "+79990001122",
            "functionType": "text",
            "messageData": {"rateType": "Transactional", "text": "Your code is 1234"},
        }
    ).encode()


def signed(body: bytes) -> dict:
    """NXCLOUD's signing headers of a send, as a sending system makes them."""
    ts = str(int(time.time() * 1000))
    return {
        "Content-Type": "application/json",
        "accessKey": ACCESS_KEY,
        "ts": ts,
        "bizType": "7",
        "action": "mt",
        "sign": documented_sign(ACCESS_KEY, "mt", "7", ts, body, SECRET),
    }


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def register(client) -> None:
    """A message, adm-1, registered by the signed-in admin."""
    made = post_json(client, REGISTER, registration("adm-1", "79100000009"))
    assert made.status_code == 201


def test_a_token_may_do_what_its_scopes_say_and_shows_its_last_use(
    proxy, app, client, anon_client, fake_nxcloud
):
    register(client)
    made = client.post("/admin/tokens", data={"name": "reader", "scope": ["read"]})
    assert made.status_code == 200 and made.headers["Cache-Control"] == "no-store"
    assert DONE.search(html_of(made)).group(1) == "Token reader created (read)."
    reader = secret_of(made)
    assert reader.startswith("vw_") and len(reader) > 40
    page = client.get("/admin/tokens")
    assert secret_of(page) is None and reader not in html_of(page)
    row = re.search(r'<tr id="token-\d+".*?</tr>', html_of(page), re.S).group(0)
    assert '<td data-label="Scopes">read</td>' in row
    assert 'data-label="Last used"><span class="muted">never</span>' in row
    anon_client.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    assert anon_client.get("/export.csv", headers=bearer(reader)).status_code == 200
    read = anon_client.get("/api/messages/adm-1", headers=bearer(reader))
    assert read.status_code == 200 and read.get_json()["phone"] == "79100000009"
    registering = post_json(
        anon_client, REGISTER, registration("adm-2", "79100000009"), headers=bearer(reader)
    )
    assert registering.status_code == 403 and registering.get_json()["field"] == "scope"
    body = send_body()
    sending = anon_client.post(SEND, data=body, headers={**signed(body), **bearer(reader)})
    assert sending.status_code == 403 and sending.get_json()["field"] == "scope"
    assert fake_nxcloud.calls == []
    with app.app_context():
        (stored,) = db.session.execute(db.select(ApiToken)).scalars()
        assert (stored.name, stored.scopes, stored.last_used_address) == (
            "reader",
            "read",
            "203.0.113.9",
        )
    row = re.search(r'<tr id="token-\d+".*?</tr>', html_of(client.get("/admin/tokens")), re.S)
    used = re.search(r'data-label="Last used"><time datetime="([^"]+)"', row.group(0)).group(1)
    at = datetime.fromisoformat(used.replace("Z", "+00:00"))
    assert abs(at - datetime.now(UTC)) < timedelta(minutes=1)
    assert "from 203.0.113.9" in row.group(0)
    # A token with the send scope goes through: the 403 was the scope's.
    sender = new_token(client, "sender", "send")
    body = send_body()
    sent = anon_client.post(SEND, data=body, headers={**signed(body), **bearer(sender)})
    assert sent.status_code == 200 and len(fake_nxcloud.calls) == 1


def test_a_revoked_token_is_refused_at_once(proxy, app, client, anon_client, fake_nxcloud):
    register(client)
    token = new_token(client, "everything", "register", "read", "send")
    assert anon_client.get("/api/messages/adm-1", headers=bearer(token)).status_code == 200
    token_id = re.search(r'<tr id="token-(\d+)"', html_of(client.get("/admin/tokens"))).group(1)
    revoked = client.post(f"/admin/tokens/{token_id}/revoke")
    assert revoked.status_code == 303
    page = client.get(revoked.headers["Location"])
    assert DONE.search(html_of(page)).group(1) == "Token everything revoked."
    assert f'<tr id="token-{token_id}" data-revoked="true">' in html_of(page)
    for answer in (
        anon_client.get("/api/messages/adm-1", headers=bearer(token)),
        anon_client.get("/export.csv", headers=bearer(token)),
        post_json(
            anon_client, REGISTER, registration("adm-3", "79100000009"), headers=bearer(token)
        ),
    ):
        assert answer.status_code == 401 and answer.get_json()["field"] == "Authorization"
    body = send_body()
    sending = anon_client.post(SEND, data=body, headers={**signed(body), **bearer(token)})
    assert sending.status_code == 401 and fake_nxcloud.calls == []


@pytest.mark.parametrize(
    "name, scopes, problem",
    [
        ("bad", ["read", "admin"], "unknown scope 'admin'"),
        ("bad", [], "give at least one scope"),
        ("", ["read"], "token name must be 1 to 64 printable characters"),
    ],
)
def test_a_token_with_an_unknown_or_no_scope_or_no_name_is_refused(
    app, client, name, scopes, problem
):
    refused = client.post("/admin/tokens", data={"name": name, "scope": scopes})
    assert refused.status_code == 400 and problem in form_error(refused)
    assert secret_of(refused) is None
    with app.app_context():
        assert db.session.execute(db.select(func.count()).select_from(ApiToken)).scalar() == 0


# My account.


def change_password(client, current: str, new: str, confirm: str | None = None):
    return client.post(
        "/account/password",
        data={
            "current_password": current,
            "new_password": new,
            "confirm_password": new if confirm is None else confirm,
        },
    )


def test_changing_ones_password_needs_the_current_one_and_a_matching_confirmation(app, client):
    wrong = change_password(client, "not my password", NEW_PASSWORD)
    assert wrong.status_code == 400 and "the current password is wrong" in form_error(wrong)
    differ = change_password(client, TEST_PASSWORD, NEW_PASSWORD, "a different new one")
    assert differ.status_code == 400 and "confirmation differ" in form_error(differ)
    short = change_password(client, TEST_PASSWORD, "short")
    assert short.status_code == 400 and "at least 8 characters" in form_error(short)
    assert sign_in(app, ADMIN, NEW_PASSWORD).status_code == 401
    assert log_in(app, app.test_client()).get("/account").status_code == 200


def test_a_changed_password_ends_the_other_sign_ins_and_keeps_this_one(app, client):
    other = log_in(app, app.test_client())
    changed = change_password(client, TEST_PASSWORD, NEW_PASSWORD)
    assert changed.status_code == 303
    page = client.get(changed.headers["Location"])
    assert page.status_code == 200
    assert DONE.search(html_of(page)).group(1) == "Password changed; 1 other sign-in(s) ended."
    assert signed_out(other)
    assert client.get("/admin/users").status_code == 200
    assert sign_in(app, ADMIN, TEST_PASSWORD).status_code == 401
    assert log_in(app, app.test_client(), ADMIN, NEW_PASSWORD).get("/account").status_code == 200


def test_the_current_password_is_tried_no_faster_than_a_sign_in(app, client):
    """A stolen cookie cannot guess the password on the account page: a wrong current
    password counts as a failed sign-in, with the same limits; a right one is no sign-in."""
    app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"] = 3
    with app.app_context():
        before = db.session.execute(
            db.select(User.last_login_at).where(User.username == ADMIN)
        ).scalar_one()
    for _ in range(3):
        assert change_password(client, "a guess", NEW_PASSWORD).status_code == 400
    refused = change_password(client, TEST_PASSWORD, NEW_PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in form_error(refused)
    assert sign_in(app, ADMIN, NEW_PASSWORD).status_code in (401, 429)
    app.config["LOGIN_MAX_FAILURES_PER_ADDRESS"] = 30
    with app.app_context():
        db.session.execute(db.delete(LoginFailure))
        db.session.commit()
    assert change_password(client, TEST_PASSWORD, NEW_PASSWORD).status_code == 303
    with app.app_context():
        after = db.session.execute(
            db.select(User.last_login_at).where(User.username == ADMIN)
        ).scalar_one()
    assert after == before  # checking the current password is not a sign-in


SIGN_IN_ROW = re.compile(
    r'<tr id="sign-in-[0-9a-f]+"( data-current="true")?>(.*?)</tr>',
    re.S,
)
END_ACTION = re.compile(r'action="/account/sessions/([0-9a-f]+)/end"')


def sign_ins(client) -> list[tuple[str, bool, str]]:
    """(session id, whether it is this one, the row's HTML) of each sign-in listed."""
    page = html_of(client.get("/account"))
    return [
        (END_ACTION.search(row).group(1), bool(current), row)
        for current, row in SIGN_IN_ROW.findall(page)
    ]


def test_the_sign_ins_list_shows_browser_and_address(app, client):
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.44"
    other.environ_base["HTTP_USER_AGENT"] = "Firefox/128.0 (test)"
    log_in(app, other)
    listed = sign_ins(client)
    assert [current for _, current, _ in listed].count(True) == 1
    (theirs,) = [row for _, current, row in listed if not current]
    assert "Firefox/128.0 (test)" in theirs and "192.0.2.44" in theirs
    (mine,) = [row for _, current, row in listed if current]
    assert "(this one)" in mine and "Sign out here" in mine


def test_ending_another_of_ones_sign_ins(app, client):
    other = log_in(app, app.test_client())
    (sid,) = [sid for sid, current, _ in sign_ins(client) if not current]
    ended = client.post(f"/account/sessions/{sid}/end")
    assert ended.status_code == 303
    assert DONE.search(html_of(client.get(ended.headers["Location"]))).group(1) == (
        "Sign-in ended."
    )
    assert signed_out(other)
    assert [current for _, current, _ in sign_ins(client)] == [True]
    again = client.post(f"/account/sessions/{sid}/end")
    assert again.status_code == 404


def test_ending_someone_elses_sign_in_answers_404_and_ends_nothing(app, client):
    alice(app)
    browser = log_in(app, app.test_client(), "alice", PASSWORD)
    (theirs,) = [sid for sid, _, _ in sign_ins(browser)]
    records = count(app)
    refused = client.post(f"/account/sessions/{theirs}/end")
    assert refused.status_code == 404 and "No such open sign-in of yours." in html_of(refused)
    assert browser.get("/account").status_code == 200
    assert count(app) == records
    assert client.post(f"/account/sessions/{'f' * 65}/end").status_code == 404


def test_ending_ones_current_sign_in_signs_out(app, client):
    other = log_in(app, app.test_client())
    (mine,) = [sid for sid, current, _ in sign_ins(client) if current]
    ended = client.post(f"/account/sessions/{mine}/end")
    assert ended.status_code == 303 and ended.headers["Location"].endswith("/login")
    assert signed_out(client)
    assert other.get("/account").status_code == 200


# The audit log.

AUDIT_ROW = re.compile(r'<tr id="audit-(\d+)"')
OLDER = re.compile(r'<a rel="next" href="([^"]+)">Older</a>')


def add_records(app, rows: list[tuple[datetime, str, str, str | None]]) -> None:
    """Records at given times: (at, username, action, target)."""
    with app.app_context():
        for at, username, action, target in rows:
            db.session.add(AuditRecord(at=at, username=username, action=action, target=target))
        db.session.commit()


def shown_ids(client, query: str = "") -> list[int]:
    page = client.get("/admin/audit" + query)
    assert page.status_code == 200, html_of(page)
    return [int(i) for i in AUDIT_ROW.findall(html_of(page))]


def ids_where(app, *conditions) -> list[int]:
    with app.app_context():
        return list(
            db.session.execute(
                db.select(AuditRecord.id).where(*conditions).order_by(AuditRecord.id.desc())
            ).scalars()
        )


@pytest.fixture
def history(app, client):
    """Records over three days besides the admin's own: alice's and bob's."""
    day = datetime(2026, 3, 10, 12, tzinfo=UTC)
    add_records(
        app,
        [
            (day - timedelta(days=2), "alice", "sign_in", "alice"),
            (day - timedelta(days=2, hours=11), "bob", "export", "messages"),
            (day - timedelta(days=1), "alice", "export", "replies"),
            (day - timedelta(hours=12), "bob", "sign_in", "bob"),  # 2026-03-10 00:00
            (day, "alice", "sign_out", "alice"),
            (day + timedelta(hours=11, minutes=59), "bob", "sign_out", "bob"),
        ],
    )


def test_the_audit_page_filters_by_user_action_and_day(app, client, history):
    everything = shown_ids(client)
    assert everything == ids_where(app)
    assert shown_ids(client, "?user=alice") == ids_where(app, AuditRecord.username == "alice")
    assert len(shown_ids(client, "?user=alice")) == 3
    assert shown_ids(client, "?action=export") == ids_where(app, AuditRecord.action == "export")
    assert shown_ids(client, "?user=bob&action=sign_out") == ids_where(
        app, AuditRecord.username == "bob", AuditRecord.action == "sign_out"
    )
    day = datetime(2026, 3, 10, tzinfo=UTC)
    assert shown_ids(client, "?since=2026-03-10&until=2026-03-10") == ids_where(
        app, AuditRecord.at >= day, AuditRecord.at < day + timedelta(days=1)
    )
    assert len(shown_ids(client, "?since=2026-03-10&until=2026-03-10")) == 3
    assert len(shown_ids(client, "?since=2026-03-08&until=2026-03-08")) == 2
    assert len(shown_ids(client, "?until=2026-03-09")) == 3
    page = html_of(client.get("/admin/audit?user=alice&action=export"))
    assert 'value="alice"' in page and '<option value="export" selected>' in page
    assert "No record matches these filters." in html_of(client.get("/admin/audit?user=carol"))


@pytest.mark.parametrize(
    "query, field, reason",
    [
        ("?since=10/03/2026", "since", "must be a date, YYYY-MM-DD"),
        ("?until=2026-13-01", "until", "must be a date, YYYY-MM-DD"),
        ("?action=drop_table", "action", "unknown action 'drop_table'"),
        ("?before=abc", "before", "must be a record number"),
    ],
)
def test_a_bad_audit_filter_answers_400_naming_the_field(client, query, field, reason):
    page = client.get("/admin/audit" + query)
    assert page.status_code == 400
    assert form_error(page) == f"{field}: {reason}"
    exported = client.get("/admin/audit.csv" + query)
    assert exported.status_code == 400
    assert exported.get_json()["field"] == field and exported.get_json()["reason"] == reason


def pages_of(client, query: str = "") -> list[list[int]]:
    """The ids on each page, following the Older link from the first page to the last."""
    pages = []
    while True:
        page = client.get("/admin/audit" + query)
        assert page.status_code == 200
        pages.append([int(i) for i in AUDIT_ROW.findall(html_of(page))])
        older = OLDER.search(html_of(page))
        if older is None:
            return pages
        link = older.group(1).replace("&amp;", "&")
        assert f"before={pages[-1][-1]}" in link
        query = "?" + link.split("?", 1)[1]


def test_audit_pages_follow_on_by_keyset_without_overlap_or_gap(app, client):
    start = utcnow() - timedelta(hours=1)
    add_records(
        app,
        [
            (start + timedelta(seconds=i), "fifty" if i % 3 == 0 else "paged", "sign_in", None)
            for i in range(150)
        ],
    )
    every = ids_where(app)
    assert len(every) == 152  # and the admin's user_create and sign_in
    pages = pages_of(client)
    assert [len(p) for p in pages] == [50, 50, 50, 2]
    assert [i for p in pages for i in p] == every
    # A filtered page's Older link keeps the filter.
    paged = pages_of(client, "?user=paged&action=sign_in")
    assert [len(p) for p in paged] == [50, 50]
    assert [i for p in paged for i in p] == ids_where(app, AuditRecord.username == "paged")
    # Exactly a page of records: no Older link.
    assert pages_of(client, "?user=fifty") == [ids_where(app, AuditRecord.username == "fifty")]
    assert pages_of(client, f"?before={every[-1]}") == [[]]


def audit_csv(client, query: str = "") -> list[dict]:
    answer = client.get("/admin/audit.csv" + query)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in answer.headers["Content-Disposition"]
    content = answer.get_data(as_text=True)
    assert content.startswith("\ufeff")
    reader = csv.reader(io.StringIO(content[1:]))
    header = next(reader)
    assert header == ["id", "at", "user", "address", "action", "target", "details"]
    return [dict(zip(header, row, strict=True)) for row in reader]


def test_the_audit_csv_has_the_filtered_rows_with_formulas_neutralised(app, client, history):
    refused = sign_in(app, "=cmd()", "any password at all")
    assert refused.status_code == 401
    failed = audit_csv(client, "?action=sign_in_failed")
    assert [(r["user"], r["target"], r["address"]) for r in failed] == [
        ("'=cmd()", "'=cmd()", "127.0.0.1")
    ]
    assert '"reason": "Unknown username or wrong password."' in failed[0]["details"]
    alice_rows = audit_csv(client, "?user=alice&since=2026-03-09")
    assert [(r["action"], r["target"], r["at"]) for r in alice_rows] == [
        ("sign_out", "alice", "2026-03-10T12:00:00Z"),
        ("export", "replies", "2026-03-09T12:00:00Z"),
    ]
    assert [int(r["id"]) for r in alice_rows] == ids_where(
        app, AuditRecord.username == "alice", AuditRecord.at >= datetime(2026, 3, 9, tzinfo=UTC)
    )
    # Each export of the log is itself recorded.
    exports = [e for e in entries(app) if e.action == "export" and e.target == "audit"]
    assert [(e.username, e.details) for e in exports] == [
        (ADMIN, {"filter": {"action": "sign_in_failed"}, "rows": 1, "complete": True}),
        (ADMIN, {"filter": {"user": "alice", "since": "2026-03-09"}, "rows": 2, "complete": True}),
    ]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_no_route_edits_or_deletes_a_record(app, client, history, method):
    before = entries(app)
    for path in ("/admin/audit", "/admin/audit.csv"):
        assert client.open(path, method=method).status_code == 405
    target = before[0].id
    for path in (f"/admin/audit/{target}", f"/admin/audit/{target}/delete"):
        assert client.open(path, method=method).status_code in (404, 405)
    assert client.post(f"/admin/audit/{target}/delete").status_code == 404
    assert entries(app) == before


@pytest.mark.parametrize(
    "path",
    [
        "/admin/users/{big}/role",
        "/admin/users/{big}/disable",
        "/admin/users/{big}/enable",
        "/admin/users/{big}/password",
        "/admin/users/{big}/sessions/end",
        "/admin/tokens/{big}/revoke",
        "/rejected/{big}/reprocess",
    ],
)
@pytest.mark.parametrize("big", [2**31, 2**63, 10**30])
def test_an_id_past_its_column_is_no_page(client, path, big):
    """An id no row can have (past INTEGER, BIGINT, or any 64-bit number) is a 404, never a
    database error."""
    if path.startswith("/rejected") and big == 2**31:
        big = 2**63  # raw bodies count in BIGINT
    response = client.post(path.format(big=big), data={"role": "viewer"})
    assert response.status_code == 404


@pytest.mark.parametrize(
    "args", ["since=0001-01-01", "until=9999-12-31", "since=0001-01-01&until=9999-12-31"]
)
def test_the_audit_filters_take_the_first_and_last_day(client, history, args):
    for path in ("/admin/audit", "/admin/audit.csv"):
        response = client.get(f"{path}?{args}")
        assert response.status_code == 200, path
        assert response.get_data(as_text=True)
