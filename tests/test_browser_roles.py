"""Roles in a real Chromium, signed in through the login form.

A viewer finds no export, send, reprocess or administration control on any page, nor in what
the live channel pushes to the page while it is open, and asking for those actions anyway is
refused with the role they need; an operator and an admin see the controls of their role on
the same pages. An admin creates an operator on the Users page and disables them while the
operator's page is open: that page stops being live within 5 s and the operator's next click
lands on the login page."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack

import httpx
import pytest

from app import create_app
from app.auth import tokens
from app.live import views as live
from app.records.models import AuditRecord, RawBody, db
from support import bodies, secrets_in_logs
from support.accounts import TEST_PASSWORD, create_test_user
from support.servers import LiveServer

pytestmark = pytest.mark.browser

ADMIN, OPERATOR, VIEWER = "ada", "oskar", "vic"
ROLE_OF = {ADMIN: "admin", OPERATOR: "operator", VIEWER: "viewer"}
PHONE = "79100000051"
OTHER_PHONE = "79100000052"
TAG = "spring-sale"
SEARCHED = "parcel"

# Every page a viewer may open: those that update live, and the others. {rid} is a message
# with a phone, receipts and a reply.
LIVE_PAGES = [
    "/",
    "/messages/{rid}",
    "/conversations",
    f"/conversations/{PHONE}",
    "/analytics",
    "/campaigns",
    f"/campaigns/show?tag={TAG}",
]
PAGES = [*LIVE_PAGES, "/rejected", f"/search?q={SEARCHED}", "/alerts", "/account"]

# The controls of each kind that a page shows, counted over the whole document (hidden ones
# too: a hidden form still posts). Links and buttons are also found by what they say.
CONTROLS_JS = """() => {
  const count = selector => document.querySelectorAll(selector).length;
  const saying = word => [...document.querySelectorAll("a, button, input[type=submit]")]
    .filter(el => (el.textContent || el.value || "").trim().toLowerCase().startsWith(word)).length;
  return {
    export: count("a[href*='export.csv'], form[action*='export.csv']") + saying("export"),
    send: count("#reply-box, #reply-text, form[action$='/send'], a[href$='/reply']")
      + saying("send"),
    reprocess: count("form[action*='/reprocess']") + saying("reprocess"),
    admin: count("a[href^='/admin'], form[action^='/admin']"),
  };
}"""

# Which kinds of control each role finds on a page (none on the pages not named).
CONTROLS_OF = {
    "operator": {
        "/": {"export"},
        f"/conversations/{PHONE}": {"export", "send"},
        "/rejected": {"reprocess"},
    },
}
CONTROLS_OF["admin"] = CONTROLS_OF["operator"]
CONTROLS_OF["viewer"] = {}


def expected_controls(role: str, path: str) -> set[str]:
    found = set(CONTROLS_OF[role].get(path, set()))
    if role == "admin":
        found.add("admin")  # the Users, Tokens and Audit links of the nav, on every page
    return found


def controls_on(tab) -> dict[str, int]:
    return tab.evaluate(CONTROLS_JS)


def shown(counts: dict[str, int]) -> set[str]:
    return {kind for kind, n in counts.items() if n}


@pytest.fixture
def shop(app, live_server):
    """A message sent to PHONE with campaign tag TAG (registered through the JSON API with a
    token of the register scope), its receipts and the user's reply through the webhooks, and
    a receipt the receipt webhook rejects, kept on /rejected. Yields its requestId and the
    token."""
    with app.app_context():
        token = tokens.create_token("shop", "register")[1]
    secrets_in_logs.add_secret(token)
    rid = uuid.uuid4().hex
    register(live_server, token, rid, PHONE, "Your order 1017 has shipped", tags=[TAG])
    webhook(live_server, bodies.DR, bodies.receipt(rid, "success"))
    webhook(live_server, bodies.DR, bodies.receipt(rid, "delivered"))
    webhook(live_server, bodies.REPLY, bodies.reply(rid, PHONE, f"Where is my {SEARCHED}?"))
    rejected = httpx.post(
        live_server.url + bodies.DR, json={"status": "read", "requestId": rid}, timeout=10
    )
    assert rejected.status_code == 422, rejected.text
    return rid, token


def webhook(server, path: str, body: dict) -> None:
    response = httpx.post(server.url + path, json=body, timeout=10)
    assert response.status_code == 200, response.text


def register(server, token: str, rid: str, phone: str, text: str, **extra) -> None:
    response = httpx.post(
        server.url + bodies.REGISTER,
        json=bodies.registration(rid, phone, text, **extra),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text


def sign_in(browser, base_url: str, username: str, password: str = TEST_PASSWORD):
    """A browser context of its own, signed in as `username` through the /login form."""
    context = browser.new_context(base_url=base_url)
    tab = context.new_page()
    tab.goto("/login")
    tab.fill("#username", username)
    tab.fill("#password", password)
    tab.click("button[type=submit]")
    tab.wait_for_url(lambda url: "/login" not in url)
    return tab


@pytest.fixture
def signed_in(browser, app, live_server):
    """signed_in(username): a tab signed in as a user of that name, made with the role
    ROLE_OF names; a script error on any of these tabs fails the test."""
    contexts, errors = [], []

    def open_(username):
        create_test_user(app, username, TEST_PASSWORD, ROLE_OF[username])
        tab = sign_in(browser, live_server.url, username)
        tab.on("pageerror", lambda exc: errors.append(f"{username}: {exc}"))
        contexts.append(tab.context)
        return tab

    yield open_
    for context in contexts:
        context.close()
    assert errors == []


def is_live(tab) -> bool:
    return bool(tab.locator("body[ws-connect]").count())


def settle(tab) -> None:
    if is_live(tab):
        tab.wait_for_selector("body[data-live-state=live]")
    tab.wait_for_load_state("networkidle")


def cursor_of(tab) -> int:
    return int(tab.get_attribute("body", "data-live-cursor"))


class LivePush:
    """What the webhooks and the API post while a page is open, and what then shows on it:
    `post(path)` sends activity that concerns the page at `path`, `arrived(tab, cursor)` waits
    until the tab has applied it (its cursor moved past `cursor` and the page's own new
    element is in)."""

    def __init__(self, server, token: str, rid: str):
        self.server, self.token, self.rid = server, token, rid
        self.selectors: list[str] = []

    def post(self, path: str) -> None:
        new = uuid.uuid4().hex
        if path == "/":
            webhook(self.server, bodies.DR, bodies.receipt(new, "delivered"))
            self.selectors = [f"#msg-{new}"]
        elif path.startswith("/messages/"):
            text = f"Thanks, got it {new[:8]}"
            webhook(self.server, bodies.DR, bodies.receipt(self.rid, "seen"))
            webhook(self.server, bodies.REPLY, bodies.reply(self.rid, PHONE, text))
            self.selectors = [f"#message-replies :text('{text}')"]
        elif path == "/conversations":
            webhook(self.server, bodies.REPLY, bodies.reply(new, OTHER_PHONE, "Hello?"))
            self.selectors = [f"#contact-{OTHER_PHONE}"]
        elif path.startswith("/conversations/"):
            text = f"One more question {new[:8]}"
            webhook(self.server, bodies.REPLY, bodies.reply(self.rid, PHONE, text))
            register(self.server, self.token, new, PHONE, "Your refund is on its way")
            self.selectors = [f"#thread :text('{text}')", f"#thread-msg-{new}"]
        else:
            webhook(self.server, bodies.DR, bodies.receipt(new, "delivered", cost=True))
            self.selectors = []

    def arrived(self, tab, before: int) -> None:
        tab.wait_for_function("c => Number(document.body.dataset.liveCursor) > c", arg=before)
        for selector in self.selectors:
            tab.locator(selector).first.wait_for()


# No htmx request, swap or settle under way: what a refresh fetched is in place.
SETTLED_JS = "() => !document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')"


def refreshes(tab) -> bool:
    """Whether the page fetches a part of itself again on live activity."""
    return bool(tab.locator("[data-live-refresh]").count())


def test_a_viewer_sees_no_export_send_or_reprocess_control_where_others_do(
    signed_in, live_server, shop
):
    """Each page, open side by side for a viewer, an operator and an admin: the viewer finds
    none of the controls, the others those of their role; then activity arrives live on the
    pages that are live, and what it adds gives the viewer none either."""
    rid, token = shop
    tabs = {ROLE_OF[name]: signed_in(name) for name in (VIEWER, OPERATOR, ADMIN)}
    push = LivePush(live_server, token, rid)
    for template in PAGES:
        path = template.format(rid=rid)
        # The three tabs load at once; each is then checked as its user sees it.
        responses = {role: tab.goto(path, wait_until="commit") for role, tab in tabs.items()}
        for role, tab in tabs.items():
            assert responses[role] is not None and responses[role].status == 200, (role, path)
            tab.wait_for_load_state()
            settle(tab)
            counts = controls_on(tab)
            assert shown(counts) == expected_controls(role, template), (role, path, counts)
        if not is_live(tabs["viewer"]):
            assert template not in LIVE_PAGES, path
            continue
        assert template in LIVE_PAGES, path
        before = {role: cursor_of(tab) for role, tab in tabs.items()}
        with ExitStack() as waiting:
            for tab in tabs.values():
                if refreshes(tab):
                    waiting.enter_context(
                        tab.expect_response(lambda r: bool(r.request.headers.get("hx-request")))
                    )
            push.post(path)
        for role, tab in tabs.items():
            push.arrived(tab, before[role])
            tab.wait_for_function(SETTLED_JS)
            counts = controls_on(tab)
            assert shown(counts) == expected_controls(role, template), (role, path, counts)
            assert tab.get_attribute("body", "data-live-state") == "live", (role, path)


def csrf_of(tab) -> str:
    return json.loads(tab.get_attribute("body", "hx-headers"))["X-CSRFToken"]


SUBMIT_FORM_JS = """([action, token]) => {
  const form = document.createElement("form");
  form.method = "post";
  form.action = action;
  const field = document.createElement("input");
  field.type = "hidden";
  field.name = "csrf_token";
  field.value = token;
  form.append(field);
  document.body.append(form);
  form.submit();
}"""


@pytest.mark.usefixtures("shop")
def test_a_viewer_asking_for_an_export_or_a_reprocess_is_refused_naming_the_role(signed_in, app):
    tab = signed_in(VIEWER)
    with app.app_context():
        raw_id = db.session.execute(
            db.select(RawBody.id).where(RawBody.outcome == "rejected")
        ).scalar_one()
        audited = db.session.execute(db.select(db.func.max(AuditRecord.id))).scalar()
    # Pages and downloads opened by their address: the page that says what is needed.
    for path in (
        "/export.csv",
        f"/export.csv?kind=replies&phone={PHONE}",
        f"/conversations/{PHONE}/reply",
    ):
        response = tab.goto(path)
        assert response is not None and response.status == 403, path
        assert tab.locator("h1").inner_text() == "Not allowed", path
        assert "needs the operator role" in tab.locator("main").inner_text(), path
    # A form posted to the reprocess address: the same page, and the body is not touched.
    tab.goto("/rejected")
    assert tab.locator(f"#raw-{raw_id}").count() == 1
    with tab.expect_navigation() as navigation:
        tab.evaluate(SUBMIT_FORM_JS, [f"/rejected/{raw_id}/reprocess", csrf_of(tab)])
    assert navigation.value.status == 403
    assert tab.locator("h1").inner_text() == "Not allowed"
    assert "needs the operator role" in tab.locator("main").inner_text()
    # Asked as htmx or a script asks: JSON naming the role.
    for headers in ({"HX-Request": "true"}, {"Accept": "application/json"}):
        answer = tab.evaluate(
            """async ([url, headers]) => {
                 const r = await fetch(url, {method: "POST", headers});
                 return {status: r.status, type: r.headers.get("content-type"), body: await r.text()};
               }""",
            [f"/rejected/{raw_id}/reprocess", {**headers, "X-CSRFToken": csrf_of(tab)}],
        )
        assert answer["status"] == 403 and answer["type"].startswith("application/json"), answer
        refusal = json.loads(answer["body"])
        assert refusal == {
            "error": "role: this needs the operator role",
            "field": "role",
            "reason": "this needs the operator role",
        }
    exported = tab.evaluate(
        """async () => {
             const r = await fetch("/export.csv", {headers: {Accept: "application/json"}});
             return {status: r.status, body: await r.json()};
           }"""
    )
    assert exported["status"] == 403, exported
    assert exported["body"]["reason"] == "this needs the operator role", exported
    # Nothing was done: the body was not run again, no export or reprocess was recorded.
    with app.app_context():
        raw = db.session.get(RawBody, raw_id)
        assert raw.outcome == "rejected" and raw.reprocessed_at is None
        actions = db.session.execute(
            db.select(AuditRecord.action).where(AuditRecord.id > (audited or 0))
        ).scalars()
        assert not {"export", "reprocess"} & set(actions)


@pytest.fixture(params=["same server", "another server"])
def operator_server(request, app_config, live_server):
    """Where the operator's page is open: on the server the admin uses, or on another server
    process of the same database, which learns that the sign-in ended from its own check of
    open sign-ins (every LIVE_SESSION_CHECK_INTERVAL, 4 s by default)."""
    if request.param == "same server":
        yield live_server.url
        return
    other = create_app(app_config)
    server = LiveServer(other).start()
    yield server.url
    server.stop()
    live.stop(other)
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_disabled_operator_loses_the_live_page_and_is_sent_to_sign_in(
    signed_in, browser, live_server, operator_server
):
    admin = signed_in(ADMIN)
    admin.goto("/admin/users")
    admin.fill("#new-username", "olga")
    admin.select_option("#new-role", "operator")
    assert admin.input_value("#new-password") == ""
    admin.click("button:text-is('Create user')")
    password = admin.locator("#secret-value").inner_text().strip()
    secrets_in_logs.add_secret(password)
    assert "olga" in admin.locator("#done").inner_text()
    row = admin.locator("tr[data-username=olga]")
    assert row.get_attribute("data-role") == "operator"
    assert row.get_attribute("data-disabled") == "false"

    operator = sign_in(browser, operator_server, "olga", password)
    # A page of the admin's on the operator's server (one database, one secret key: the
    # admin's sign-in holds there too), to see what that server pushes.
    watcher = admin.context.new_page()
    try:
        operator.goto("/")
        operator.wait_for_selector("body[data-live-state=live]")
        before = uuid.uuid4().hex
        webhook(live_server, bodies.DR, bodies.receipt(before, "delivered"))
        operator.locator(f"#msg-{before}").wait_for()

        disabled_at = time.monotonic()
        with admin.expect_navigation():
            row.locator("button", has_text="Disable").click()
        assert admin.locator("tr[data-username=olga]").get_attribute("data-disabled") == "true"
        # Within 5 s of the click, the operator's page is no longer live, and says so.
        left = 5.0 - (time.monotonic() - disabled_at)
        operator.wait_for_function(
            "() => document.body.dataset.liveState !== 'live'", timeout=max(left * 1000, 1)
        )
        assert operator.get_attribute("body", "data-live-state") in ("refused", "offline")
        assert operator.locator("#live-status").inner_text() != "live"

        # Activity after that reaches a page still signed in on that server, and not the
        # operator's.
        watcher.goto(operator_server + "/")
        watcher.wait_for_selector("body[data-live-state=live]")
        after = uuid.uuid4().hex
        webhook(live_server, bodies.DR, bodies.receipt(after, "delivered"))
        watcher.locator(f"#msg-{after}").wait_for()
        assert operator.locator(f"#msg-{after}").count() == 0
        assert operator.locator(f"#msg-{before}").count() == 1

        # The next click lands on the sign-in page, which does not let them back in.
        operator.click("nav a:text-is('Conversations')")
        operator.wait_for_url("**/login**")
        assert operator.locator("#username").is_visible()
        operator.fill("#username", "olga")
        operator.fill("#password", password)
        with operator.expect_navigation():
            operator.click("button[type=submit]")
        assert "/login" in operator.url
        assert operator.locator(".auth-error").is_visible()
    finally:
        operator.context.close()
