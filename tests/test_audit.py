"""The audit log: every action of a person, from a page or a command on the server, leaves
exactly one record naming who did it, from where, on what; webhooks and machine calls leave
none; the records outlive a rebuild, cannot be changed even by SQL sent straight to the
database, and leave only by age through `purge`; `viberwatch audit` prints them."""

from __future__ import annotations

import getpass
import re
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app import ingest
from app.core.times import utcnow
from app.records.models import ApiToken, AuditRecord, RawBody, SendAttempt, db
from support.accounts import TEST_PASSWORD, TEST_USER, create_test_user, log_in, login_form_token
from support.audit_log import count, entries, mark, only_new, user_id
from support.bodies import DR, REGISTER, REPLY, encoded, post_json, receipt, registration, reply
from support.fake_nxcloud import nxcloud_config

ADMIN = TEST_USER  # the signed-in admin of the `client` fixture
PASSWORD = "alice long password 1"
NEW_PASSWORD = "a brand new password"
OS_USER = getpass.getuser()
PHONE = "79100000030"


def cli(app, *args: str):
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result


def alice(app, role: str = "viewer") -> int:
    create_test_user(app, "alice", PASSWORD, role=role)
    return user_id(app, "alice")


def signed_in_alice(app, times: int = 1) -> list:
    alice(app)
    return [log_in(app, app.test_client(), "alice", PASSWORD) for _ in range(times)]


def by_admin(app, entry, target: str, details: dict) -> None:
    assert (entry.username, entry.user_id, entry.address) == (
        ADMIN,
        user_id(app, ADMIN),
        "127.0.0.1",
    )
    assert (entry.target, entry.details) == (target, details)


def by_cli(entry, target: str, details: dict) -> None:
    assert (entry.username, entry.user_id, entry.address) == ("cli", None, None)
    assert (entry.target, entry.details) == (target, {"os_user": OS_USER, **details})


# Sign-ins.


def test_sign_in_is_recorded_as_the_user_from_their_address(app):
    uid = alice(app)
    start = mark(app)
    browser = app.test_client()
    browser.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    log_in(app, browser, "alice", PASSWORD)
    entry = only_new(app, start, "sign_in")
    assert (entry.username, entry.user_id, entry.target, entry.address) == (
        "alice",
        uid,
        "alice",
        "192.0.2.7",
    )


def test_a_failed_sign_in_is_recorded_with_the_name_typed_and_the_reason(app):
    alice(app)
    browser = app.test_client()
    for name, password in (("alice", "not her password"), ("nobody", PASSWORD)):
        start = mark(app)
        refused = browser.post(
            "/login",
            data={"username": name, "password": password, "csrf_token": login_form_token(browser)},
        )
        assert refused.status_code == 401
        entry = only_new(app, start, "sign_in_failed")
        assert (entry.username, entry.user_id, entry.target, entry.address) == (
            name,
            None,
            name,
            "127.0.0.1",
        )
        assert entry.details == {"reason": "Unknown username or wrong password."}


def test_sign_out_is_recorded(app, client):
    start = mark(app)
    assert client.post("/logout").status_code == 302
    entry = only_new(app, start, "sign_out")
    by_admin(app, entry, ADMIN, {})


# Passwords.


def test_changing_ones_own_password_is_recorded_and_so_is_a_wrong_current_password(app, client):
    start = mark(app)
    differ = client.post(
        "/account/password",
        data={
            "current_password": "not the password",
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD + "x",
        },
    )
    assert differ.status_code == 400 and entries(app, start) == []  # no password was checked
    wrong = client.post(
        "/account/password",
        data={
            "current_password": "not the password",
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
    )
    assert wrong.status_code == 400
    entry = only_new(app, start, "password_change_failed")
    by_admin(app, entry, ADMIN, {"reason": "wrong password"})
    other = log_in(app, app.test_client())
    start = mark(app)
    changed = client.post(
        "/account/password",
        data={
            "current_password": TEST_PASSWORD,
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
    )
    assert changed.status_code == 303
    entry = only_new(app, start, "password_change")
    by_admin(app, entry, ADMIN, {"sign_ins_ended": 1})
    assert other.get("/account").status_code == 302


def test_an_admins_password_reset_on_the_users_page_is_recorded(app, client):
    (browser,) = signed_in_alice(app)
    start = mark(app)
    reset = client.post(f"/admin/users/{user_id(app, 'alice')}/password")
    assert reset.status_code == 200
    entry = only_new(app, start, "password_reset")
    by_admin(app, entry, "alice", {"sign_ins_ended": 1})
    assert browser.get("/").status_code == 302


def test_set_password_from_the_command_line_is_recorded_as_cli_with_the_os_user(app):
    signed_in_alice(app, times=2)
    start = mark(app)
    cli(app, "set-password", "alice", "--password", NEW_PASSWORD)
    by_cli(only_new(app, start, "password_reset"), "alice", {"sign_ins_ended": 2})


# Users.


def test_creating_a_user_on_the_page_is_recorded(app, client):
    start = mark(app)
    made = client.post(
        "/admin/users", data={"username": "bob", "role": "operator", "password": PASSWORD}
    )
    assert made.status_code == 200
    by_admin(app, only_new(app, start, "user_create"), "bob", {"role": "operator"})


def test_create_user_from_the_command_line_is_recorded(app):
    start = mark(app)
    cli(app, "create-user", "carol", "--role", "admin", "--password", PASSWORD)
    by_cli(only_new(app, start, "user_create"), "carol", {"role": "admin"})


def test_a_role_change_on_the_page_is_recorded(app, client):
    uid = alice(app)
    start = mark(app)
    changed = client.post(f"/admin/users/{uid}/role", data={"role": "operator"})
    assert changed.status_code == 303
    by_admin(
        app, only_new(app, start, "role_change"), "alice", {"from": "viewer", "to": "operator"}
    )


def test_set_role_from_the_command_line_is_recorded_once(app):
    alice(app)
    start = mark(app)
    cli(app, "set-role", "alice", "admin")
    by_cli(only_new(app, start, "role_change"), "alice", {"from": "viewer", "to": "admin"})
    # Nothing changed, nothing recorded.
    again = mark(app)
    assert "already admin" in cli(app, "set-role", "alice", "admin").output
    assert entries(app, again) == []


def test_disabling_a_user_on_the_page_is_recorded(app, client):
    signed_in_alice(app)
    start = mark(app)
    disabled = client.post(f"/admin/users/{user_id(app, 'alice')}/disable")
    assert disabled.status_code == 303
    by_admin(app, only_new(app, start, "user_disable"), "alice", {"sign_ins_ended": 1})


def test_disable_user_from_the_command_line_is_recorded(app):
    signed_in_alice(app, times=2)
    start = mark(app)
    cli(app, "disable-user", "alice")
    by_cli(only_new(app, start, "user_disable"), "alice", {"sign_ins_ended": 2})


def test_enabling_a_user_is_recorded_from_the_page_and_the_command_line(app, client):
    uid = alice(app)
    cli(app, "disable-user", "alice")
    start = mark(app)
    assert client.post(f"/admin/users/{uid}/enable").status_code == 303
    by_admin(app, only_new(app, start, "user_enable"), "alice", {})
    cli(app, "disable-user", "alice")
    start = mark(app)
    cli(app, "enable-user", "alice")
    by_cli(only_new(app, start, "user_enable"), "alice", {})


# Sign-ins ended.


def test_ending_a_users_sign_ins_on_the_page_is_recorded(app, client):
    browsers = signed_in_alice(app, times=2)
    start = mark(app)
    ended = client.post(f"/admin/users/{user_id(app, 'alice')}/sessions/end")
    assert ended.status_code == 303
    by_admin(app, only_new(app, start, "sessions_end"), "alice", {"sign_ins_ended": 2})
    assert [b.get("/").status_code for b in browsers] == [302, 302]


def test_logout_user_from_the_command_line_is_recorded(app):
    signed_in_alice(app, times=3)
    start = mark(app)
    cli(app, "logout-user", "alice")
    by_cli(only_new(app, start, "sessions_end"), "alice", {"sign_ins_ended": 3})


SIGN_IN_ROW = re.compile(
    r'<tr id="sign-in-[0-9a-f]+"( data-current="true")?>.*?'
    r'action="/account/sessions/([0-9a-f]+)/end"',
    re.S,
)


def test_ending_ones_own_sign_ins_on_the_account_page_is_recorded(app, client):
    other = log_in(app, app.test_client())
    listed = SIGN_IN_ROW.findall(client.get("/account").get_data(as_text=True))
    (sid,) = [sid for current, sid in listed if not current]
    start = mark(app)
    assert client.post(f"/account/sessions/{sid}/end").status_code == 303
    by_admin(app, only_new(app, start, "sessions_end"), ADMIN, {"sign_ins_ended": 1, "own": True})
    assert other.get("/account").status_code == 302
    # This one: the record is written, then the user is signed out.
    (this_one,) = [
        sid for _, sid in SIGN_IN_ROW.findall(client.get("/account").get_data(as_text=True))
    ]
    start = mark(app)
    assert client.post(f"/account/sessions/{this_one}/end").status_code == 303
    by_admin(app, only_new(app, start, "sessions_end"), ADMIN, {"sign_ins_ended": 1, "own": True})
    assert client.get("/account").status_code == 302


# API tokens.


def token_row(app, name: str) -> ApiToken:
    with app.app_context():
        row = db.session.execute(db.select(ApiToken).where(ApiToken.name == name)).scalar_one()
        db.session.expunge(row)
        return row


def test_creating_and_revoking_a_token_on_the_page_are_recorded(app, client):
    start = mark(app)
    made = client.post("/admin/tokens", data={"name": "reports", "scope": ["read"]})
    assert made.status_code == 200
    row = token_row(app, "reports")
    by_admin(app, only_new(app, start, "token_create"), f"{row.id} reports", {"scopes": "read"})
    start = mark(app)
    assert client.post(f"/admin/tokens/{row.id}/revoke").status_code == 303
    by_admin(app, only_new(app, start, "token_revoke"), f"{row.id} reports", {})
    # Revoking it again changes nothing and records nothing.
    again = mark(app)
    assert client.post(f"/admin/tokens/{row.id}/revoke").status_code == 303
    assert entries(app, again) == []


def test_token_commands_are_recorded(app):
    start = mark(app)
    cli(app, "create-token", "sender", "--scope", "send", "--scope", "register")
    row = token_row(app, "sender")
    by_cli(only_new(app, start, "token_create"), f"{row.id} sender", {"scopes": "register send"})
    start = mark(app)
    cli(app, "revoke-token", "sender")
    by_cli(only_new(app, start, "token_revoke"), f"{row.id} sender", {})


# Exports.


@pytest.fixture
def messages(anon_client, api_token):
    """Two messages registered by an API token, one failed, one replied to."""
    auth = {"Authorization": f"Bearer {api_token}"}
    for rid, phone in (("exp-1", "79100000001"), ("exp-2", "79100000002")):
        registered = post_json(anon_client, REGISTER, registration(rid, phone), headers=auth)
        assert registered.status_code == 201
    assert post_json(anon_client, DR, receipt("exp-1", "failed", 9002)).status_code == 200
    assert post_json(anon_client, DR, receipt("exp-2", "delivered")).status_code == 200
    for text_ in ("thanks", "see you"):
        assert (
            post_json(anon_client, REPLY, reply("exp-2", "79100000002", text_)).status_code == 200
        )


def test_a_messages_export_is_recorded_with_its_filter_and_rows(app, client, messages):
    start = mark(app)
    everything = client.get("/export.csv")
    assert everything.status_code == 200 and everything.get_data().count(b"\r\n") == 3
    by_admin(
        app, only_new(app, start, "export"), "messages", {"filter": {}, "rows": 2, "complete": True}
    )
    start = mark(app)
    failed = client.get("/export.csv?status=failed")
    assert b"exp-1" in failed.get_data() and b"exp-2" not in failed.get_data()
    by_admin(
        app,
        only_new(app, start, "export"),
        "messages",
        {"filter": {"status": ["failed"]}, "rows": 1, "complete": True},
    )


def test_a_replies_export_is_recorded_with_its_filter_and_rows(app, client, messages):
    start = mark(app)
    replies = client.get("/export.csv?kind=replies&phone=79100000002")
    assert replies.status_code == 200 and b"see you" in replies.get_data()
    by_admin(
        app,
        only_new(app, start, "export"),
        "replies",
        {"filter": {"phone": "79100000002"}, "rows": 2, "complete": True},
    )


def test_an_export_by_api_token_is_recorded_as_the_token(app, anon_client, api_token, messages):
    start = mark(app)
    exported = anon_client.get(
        "/export.csv?status=delivered", headers={"Authorization": f"Bearer {api_token}"}
    )
    assert exported.status_code == 200 and b"exp-2" in exported.get_data()
    entry = only_new(app, start, "export")
    row = token_row(app, "tests")
    assert (entry.username, entry.user_id, entry.address, entry.target) == (
        "token tests",
        None,
        "127.0.0.1",
        "messages",
    )
    assert entry.details == {
        "token_id": row.id,
        "filter": {"status": ["delivered"]},
        "rows": 1,
        "complete": True,
    }


# Reprocessing and sending.


def refused_body(app, rid: str) -> int:
    body = encoded(receipt(rid, "seen"))
    with app.app_context():
        return ingest.refuse("dr", body, "application/json", {}, "127.0.0.1", 401, "no token").id


def test_reprocessing_a_body_on_the_page_is_recorded_with_the_body(app, client):
    raw_id = refused_body(app, "late-1")
    start = mark(app)
    assert client.post(f"/rejected/{raw_id}/reprocess").status_code == 303
    by_admin(app, only_new(app, start, "reprocess"), f"body {raw_id}", {"outcome": "accepted"})


def test_the_reprocess_command_is_recorded_with_the_ids(app):
    first, second = refused_body(app, "late-1"), refused_body(app, "late-2")
    start = mark(app)
    assert "2 accepted" in cli(app, "reprocess", "--id", str(first), "--id", str(second)).output
    by_cli(
        only_new(app, start, "reprocess"),
        "2 bodies",
        {"ids": [first, second], "more": 0, "accepted": 2},
    )
    with app.app_context():
        assert {db.session.get(RawBody, i).outcome for i in (first, second)} == {"accepted"}


@pytest.fixture
def sending(app_config, fake_nxcloud):
    app_config.update(nxcloud_config(fake_nxcloud))


def test_a_send_from_a_conversation_is_recorded_with_the_phone(
    sending, fake_nxcloud, app, client, anon_client
):
    written = reply("a" * 32, PHONE, "Can I change the time?", appkey="FakeApp1")
    assert post_json(anon_client, REPLY, written).status_code == 200
    start = mark(app)
    sent = client.post(
        f"/conversations/{PHONE}/send", data={"text": "Yes"}, headers={"HX-Request": "true"}
    )
    assert sent.status_code == 200
    (accepted,) = fake_nxcloud.sent
    with app.app_context():
        attempt = db.session.execute(db.select(SendAttempt)).scalar_one()
        assert (attempt.outcome, attempt.request_id) == ("sent", accepted["requestId"])
        attempt_id = attempt.id
    by_admin(
        app,
        only_new(app, start, "send"),
        PHONE,
        {"outcome": "sent", "requestId": accepted["requestId"], "attempt": attempt_id},
    )


# What writes none, and what the records withstand.


def test_webhooks_and_machine_calls_write_no_record(app, anon_client, api_token):
    before = count(app)
    auth = {"Authorization": f"Bearer {api_token}"}
    registered = post_json(anon_client, REGISTER, registration("wh-1", PHONE), headers=auth)
    assert registered.status_code == 201
    for status in ("delivered", "seen"):
        assert post_json(anon_client, DR, receipt("wh-1", status)).status_code == 200
    assert post_json(anon_client, REPLY, reply("wh-1", PHONE, "hi")).status_code == 200
    assert post_json(anon_client, DR, {"status": "read"}).status_code == 422
    assert anon_client.get("/api/messages/wh-1", headers=auth).status_code == 200
    assert count(app) == before


def test_the_audit_log_survives_rebuild(app, client, anon_client):
    assert post_json(anon_client, DR, receipt("rb-1", "delivered")).status_code == 200
    assert post_json(anon_client, REPLY, reply("rb-1", PHONE, "hi")).status_code == 200
    cli(app, "create-user", "bob", "--password", PASSWORD)
    client.post("/logout")
    before = entries(app)
    assert [e.action for e in before] == ["user_create", "sign_in", "user_create", "sign_out"]
    rebuilt = cli(app, "rebuild")
    assert "messages checked: 1" in rebuilt.output
    assert entries(app) == before


def test_the_database_refuses_an_update_of_a_record(app, client):
    before = entries(app)
    target = before[-1]
    with app.app_context():
        with pytest.raises(DBAPIError, match="append-only"):
            db.session.execute(
                text("UPDATE audit_record SET username = :name, target = NULL WHERE id = :id"),
                {"name": "someone else", "id": target.id},
            )
        db.session.rollback()
        row = db.session.get(AuditRecord, target.id)
        row.details = '{"rewritten": true}'
        with pytest.raises(DBAPIError, match="append-only"):
            db.session.commit()
        db.session.rollback()
    assert entries(app) == before


def add_record(app, age: timedelta, username: str) -> None:
    with app.app_context():
        db.session.add(
            AuditRecord(at=utcnow() - age, username=username, action="sign_in", target=username)
        )
        db.session.commit()


@pytest.fixture
def audit_kept_30_days(app_config):
    app_config["AUDIT_RETENTION_DAYS"] = 30


@pytest.fixture
def audit_kept_forever(app_config):
    app_config["AUDIT_RETENTION_DAYS"] = 0


def test_purge_deletes_audit_records_past_their_retention(audit_kept_30_days, app):
    add_record(app, timedelta(days=31), "old")
    add_record(app, timedelta(days=29), "recent")
    purged = cli(app, "purge", "--older-than", "90d")
    assert "deleted: 1 audit record" in purged.output
    assert [e.username for e in entries(app)] == ["recent"]


def test_purge_keeps_every_audit_record_when_retention_is_zero(audit_kept_forever, app):
    add_record(app, timedelta(days=3650), "ancient")
    add_record(app, timedelta(days=1), "recent")
    purged = cli(app, "purge", "--older-than", "30d")
    assert "audit records kept" in purged.output
    assert [e.username for e in entries(app)] == ["ancient", "recent"]


def test_the_audit_command_prints_recent_records_filtered(app):
    alice(app)
    log_in(app, app.test_client(), "alice", PASSWORD)
    cli(app, "set-role", "alice", "operator")
    everything = cli(app, "audit").output.splitlines()
    assert [line.split()[2] for line in everything] == ["cli", "alice", "cli"]
    assert f'  role_change alice {{"from": "viewer", "os_user": "{OS_USER}"' in everything[0]
    assert everything[1].endswith("  alice from 127.0.0.1  sign_in alice")
    assert f'  user_create alice {{"os_user": "{OS_USER}", "role": "viewer"}}' in everything[2]
    mine = cli(app, "audit", "--user", "alice").output.splitlines()
    assert len(mine) == 1 and "sign_in alice" in mine[0]
    changes = cli(app, "audit", "--action", "role_change").output.splitlines()
    assert len(changes) == 1 and "role_change alice" in changes[0]
    assert [len(cli(app, "audit", "--limit", "2").output.splitlines())] == [2]
    assert cli(app, "audit", "--user", "nobody").output.strip() == "no audit records"
    unknown = app.test_cli_runner().invoke(args=["audit", "--action", "nothing"])
    assert unknown.exit_code == 2 and "--action" in unknown.output
    assert count(app) == 3
