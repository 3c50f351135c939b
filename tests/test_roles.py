"""Every route, for every role and every token scope: the status it answers, and nothing
changed when it refuses. A matrix, not a sample: the cases must name every endpoint that
has a rule (app/auth/roles.ACCESS), and every endpoint must have a rule or be public, so a
route added without a rule fails here."""

from __future__ import annotations

import hashlib
import re
import uuid

import pytest
import websocket

from app.auth import tokens, users
from app.auth.guard import PUBLIC_ENDPOINTS
from app.auth.roles import ACCESS, ADMIN, OPERATOR, RANK, SCOPES, VIEWER
from app.auth.security import MACHINE_BLUEPRINTS
from app.ingest import refuse
from app.records.models import UserSession, db
from support import secrets_in_logs
from support.accounts import TEST_PASSWORD, create_test_user, log_in
from support.bodies import DR, REGISTER, REPLY, post_json, receipt, registration, reply
from support.fake_nxcloud import nxcloud_config

PHONE = "79100000071"
# Columns a request may change without doing anything: when a sign-in or token was last
# used (written at most once a minute).
VOLATILE = {
    "user_session": {"last_seen_at"},
    "api_token": {"last_used_at", "last_used_address"},
}


# What the product promises, written here on its own (not read from the rules it checks):
# the least role of each endpoint, and the token scope it takes (None: no token).

PROMISED: dict[str, tuple[str, str | None]] = {
    "dashboard.messages": (VIEWER, None),
    "dashboard.message": (VIEWER, None),
    "dashboard.rejected": (VIEWER, None),
    "conversations.index": (VIEWER, None),
    "conversations.thread": (VIEWER, None),
    "analytics.index": (VIEWER, None),
    "analytics.data": (VIEWER, None),
    "analytics.top_phones": (VIEWER, None),
    "campaigns.index": (VIEWER, None),
    "campaigns.show": (VIEWER, None),
    "campaigns.compare": (VIEWER, None),
    "search.index": (VIEWER, None),
    "alerts.index": (VIEWER, None),
    "live.socket": (VIEWER, None),
    "auth.logout": (VIEWER, None),
    "account.index": (VIEWER, None),
    "account.password": (VIEWER, None),
    "account.end_session": (VIEWER, None),
    "api.read_message": (VIEWER, "read"),
    "api.register_message": (OPERATOR, "register"),
    "export.export_csv": (OPERATOR, "read"),
    "dashboard.reprocess": (OPERATOR, None),
    "sending.reply_page": (OPERATOR, None),
    "sending.send": (OPERATOR, None),
    "sending.session_window": (OPERATOR, None),
    "admin.users_page": (ADMIN, None),
    "admin.create_user": (ADMIN, None),
    "admin.set_role": (ADMIN, None),
    "admin.disable_user": (ADMIN, None),
    "admin.enable_user": (ADMIN, None),
    "admin.reset_password": (ADMIN, None),
    "admin.end_sessions": (ADMIN, None),
    "admin.tokens_page": (ADMIN, None),
    "admin.create_token": (ADMIN, None),
    "admin.revoke_token": (ADMIN, None),
    "admin.audit_page": (ADMIN, None),
    "admin.audit_csv": (ADMIN, None),
    # The send proxy authenticates on its own: a token with `send`, never a sign-in.
    "proxy.send": (None, "send"),
}


@pytest.fixture
def app_config(app_config, fake_nxcloud):
    return {**app_config, **nxcloud_config(fake_nxcloud)}


class World:
    """Users of every role, a token of every scope, and records for each route to act on."""

    def __init__(self, app):
        self.app = app
        admin = app.test_client()
        create_test_user(app, "ada", role=ADMIN)
        log_in(app, admin, "ada")
        self.rid = uuid.uuid4().hex
        for path, body in (
            (REGISTER, registration(self.rid, PHONE, "hello")),
            (DR, receipt(self.rid, "delivered")),
            (REPLY, reply(self.rid, PHONE, "thanks")),
        ):
            assert post_json(admin, path, body).status_code in (200, 201)
        with app.app_context():
            raw = refuse("dr", b'{"status": "seen"}', "application/json", {}, "127.0.0.1", 401, "x")
            self.raw_id = raw.id
            users.create_user("tara", TEST_PASSWORD, VIEWER)
            self.target_id = users.find_user("tara").id
            self.token_ids = {}
            self.tokens = {}
            for scope in SCOPES:
                row, secret = tokens.create_token(f"only-{scope}", [scope])
                self.token_ids[scope], self.tokens[scope] = row.id, secret
                secrets_in_logs.add_secret(secret)
            self.revocable = tokens.create_token("to-revoke", ["read"])[0].id
        for role in (VIEWER, OPERATOR):
            create_test_user(app, role, role=role)

    def client(self, role: str | None):
        c = self.app.test_client()
        if role is not None:
            log_in(self.app, c, {ADMIN: "ada"}.get(role, role))
        return c

    def other_sign_in(self, role: str) -> str:
        """The id of a second sign-in of the role's user (for ending one of one's own)."""
        log_in(self.app, self.app.test_client(), {ADMIN: "ada"}.get(role, role))
        with self.app.app_context():
            user = users.find_user({ADMIN: "ada"}.get(role, role))
            return (
                db.session.execute(
                    db.select(UserSession.id)
                    .where(UserSession.user_id == user.id, UserSession.ended_at.is_(None))
                    .order_by(UserSession.created_at.desc())
                )
                .scalars()
                .first()
            )

    def cases(self, role: str | None) -> list[tuple[str, str, str, dict]]:
        """(endpoint, method, path, form) for every endpoint with a rule; auth.logout last,
        as it ends the sign-in the others use."""
        sid = self.other_sign_in(role) if role else "0" * 64
        rid, phone, raw, target = self.rid, PHONE, self.raw_id, self.target_id
        return [
            ("dashboard.messages", "GET", "/", {}),
            ("dashboard.message", "GET", f"/messages/{rid}", {}),
            ("dashboard.rejected", "GET", "/rejected", {}),
            ("conversations.index", "GET", "/conversations", {}),
            ("conversations.thread", "GET", f"/conversations/{phone}", {}),
            ("analytics.index", "GET", "/analytics", {}),
            ("analytics.data", "GET", "/analytics/data.json", {}),
            ("analytics.top_phones", "GET", "/analytics/top-phones", {}),
            ("campaigns.index", "GET", "/campaigns", {}),
            ("campaigns.show", "GET", "/campaigns/show?tag=promo", {}),
            ("campaigns.compare", "GET", "/campaigns/compare?tag=a&tag=b", {}),
            ("search.index", "GET", "/search?q=thanks", {}),
            ("alerts.index", "GET", "/alerts", {}),
            ("account.index", "GET", "/account", {}),
            (
                "account.password",
                "POST",
                "/account/password",
                {
                    "current_password": TEST_PASSWORD,
                    "new_password": TEST_PASSWORD,
                    "confirm_password": TEST_PASSWORD,
                },
            ),
            ("account.end_session", "POST", f"/account/sessions/{sid}/end", {}),
            ("api.read_message", "GET", f"/api/messages/{rid}", {}),
            (
                "api.register_message",
                "POST",
                "/api/messages",
                {"json": registration(uuid.uuid4().hex, phone, "registered")},
            ),
            ("export.export_csv", "GET", "/export.csv", {}),
            ("dashboard.reprocess", "POST", f"/rejected/{raw}/reprocess", {}),
            ("sending.reply_page", "GET", f"/conversations/{phone}/reply", {}),
            ("sending.session_window", "GET", f"/conversations/{phone}/session-window", {}),
            (
                "sending.send",
                "POST",
                f"/conversations/{phone}/send",
                {"text": "hi", "confirm": "1"},
            ),
            ("admin.users_page", "GET", "/admin/users", {}),
            (
                "admin.create_user",
                "POST",
                "/admin/users",
                {"username": f"new-{role}", "role": VIEWER, "password": TEST_PASSWORD},
            ),
            ("admin.set_role", "POST", f"/admin/users/{target}/role", {"role": OPERATOR}),
            ("admin.reset_password", "POST", f"/admin/users/{target}/password", {}),
            ("admin.end_sessions", "POST", f"/admin/users/{target}/sessions/end", {}),
            ("admin.disable_user", "POST", f"/admin/users/{target}/disable", {}),
            ("admin.enable_user", "POST", f"/admin/users/{target}/enable", {}),
            ("admin.tokens_page", "GET", "/admin/tokens", {}),
            ("admin.create_token", "POST", "/admin/tokens", {"name": f"t-{role}", "scope": "read"}),
            ("admin.revoke_token", "POST", f"/admin/tokens/{self.revocable}/revoke", {}),
            ("admin.audit_page", "GET", "/admin/audit", {}),
            ("admin.audit_csv", "GET", "/admin/audit.csv", {}),
            ("live.socket", "WS", "/ws", {}),
            ("auth.logout", "POST", "/logout", {}),
        ]

    def state(self) -> str:
        """A digest of every row of every table, less the VOLATILE columns."""
        digest = hashlib.sha256()
        with self.app.app_context():
            for table in db.metadata.sorted_tables:
                skip = VOLATILE.get(table.name, set())
                columns = [c for c in table.columns if c.name not in skip]
                order = list(table.primary_key.columns) or columns
                for row in db.session.execute(db.select(*columns).order_by(*order)):
                    digest.update(repr((table.name, tuple(row))).encode())
        return digest.hexdigest()


def request(client, method: str, path: str, form: dict, headers=None):
    form = dict(form)
    if "json" in form:
        response = client.open(path, method=method, json=form["json"], headers=headers)
    else:
        response = client.open(path, method=method, data=form, headers=headers)
    response.get_data()  # a streamed answer (an export) runs to its end, as a download does
    response.close()
    return response


def socket_opens(app, live_server, client) -> bool:
    """Whether /ws accepts this client's session for a real WebSocket handshake."""
    name = app.config.get("SESSION_COOKIE_NAME", "session")
    cookie = client.get_cookie(name)
    url = live_server.url.replace("http://", "ws://", 1) + "/ws"
    try:
        ws = websocket.create_connection(
            url, cookie=f"{name}={cookie.value}" if cookie else None, timeout=5
        )
    except websocket.WebSocketBadStatusException as exc:
        assert exc.status_code in (401, 403), exc.status_code
        return False
    ws.close()
    return True


def test_every_endpoint_has_a_rule_or_is_public(app):
    ruled = set(ACCESS)
    for rule in app.url_map.iter_rules():
        blueprint = rule.endpoint.rpartition(".")[0]
        assert (
            rule.endpoint in ruled
            or rule.endpoint in PUBLIC_ENDPOINTS
            or blueprint in MACHINE_BLUEPRINTS
        ), f"{rule.rule} ({rule.endpoint}) has no access rule in app/auth/roles.ACCESS"
    # And every rule names a route that exists (a renamed view leaves no stale rule).
    assert ruled <= {r.endpoint for r in app.url_map.iter_rules()}


def test_the_cases_name_every_ruled_endpoint(app):
    world = World(app)
    assert {c[0] for c in world.cases(ADMIN)} == set(ACCESS)
    assert set(PROMISED) - {"proxy.send"} == set(ACCESS)


def test_an_endpoint_without_a_rule_is_refused_to_everyone(app_config):
    from app import create_app

    app = create_app(app_config)

    @app.get("/unruled")
    def unruled():
        return "unruled-view-ran"

    with app.app_context():
        db.create_all()
    create_test_user(app, "ada", role=ADMIN)
    admin = log_in(app, app.test_client(), "ada")
    response = admin.get("/unruled")
    assert response.status_code == 403 and b"unruled-view-ran" not in response.data
    assert b"no access rule" in response.data


@pytest.mark.parametrize("role", [None, VIEWER, OPERATOR, ADMIN])
def test_every_route_for_each_role(app, live_server, role):
    world = World(app)
    client = world.client(role)
    checked = 0
    for endpoint, method, path, form in world.cases(role):
        least = PROMISED[endpoint][0]
        allowed = role is not None and RANK[role] >= RANK[least]
        if method == "WS":
            assert socket_opens(app, live_server, client) == allowed, (role, endpoint)
            checked += 1
            continue
        for headers in ({}, {"HX-Request": "true"}) if method == "GET" else ({},):
            before = world.state()
            response = request(client, method, path, form, headers)
            status = response.status_code
            where = (role, endpoint, method, path, headers, status)
            checked += 1
            if allowed:
                assert status not in (401, 403) and status < 500, where
                continue
            # Refused, and nothing was attempted.
            assert world.state() == before, where
            if role is None:
                assert status in (302, 401), where
            else:
                assert status == 403, where
                text = re.sub(r"<[^>]+>", "", response.get_data(as_text=True))
                assert f"needs the {least} role" in text, where
    assert checked >= len(ACCESS)


@pytest.mark.parametrize("scope", SCOPES)
def test_every_route_for_each_token_scope(app, scope):
    """A token opens only what its scope allows: the API and the export by their rules, the
    send proxy with `send`; every other route treats it as no sign-in at all."""
    world = World(app)
    bearer = {"Authorization": f"Bearer {world.tokens[scope]}"}
    anonymous = world.app.test_client()
    for endpoint, method, path, form in [
        *world.cases(None),
        (
            "proxy.send",
            "POST",
            "/nxcloud/api/viber/mt",
            {"json": {"phone": PHONE, "content": "hi", "appkey": "k"}},
        ),
    ]:
        if method == "WS":
            continue
        wanted = PROMISED[endpoint][1]
        before = world.state()
        response = request(anonymous, method, path, form, bearer)
        status = response.status_code
        where = (scope, endpoint, status)
        if wanted == scope:
            assert status not in (401, 403) and status < 500, where
            continue
        assert world.state() == before, where
        if wanted is not None:  # a route that takes tokens, not this one's
            assert status == 403, where
            assert f"the {wanted} scope" in response.get_data(as_text=True), where
        else:  # a route for people: the token counts for nothing
            assert status in (302, 401), where
