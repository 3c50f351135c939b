"""Every page, signed in and full of data, passes an axe-core audit in a real Chromium with no
serious or critical finding, on a 390 px phone and a 1366 px desk, and the main pages in the
dark colour scheme too."""

import os
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import pytest

from app import create_app, ingest
from app.auth import tokens, users
from app.live import views as live
from app.records.models import db
from support import secrets_in_logs
from support.accounts import TEST_PASSWORD, TEST_USER, create_test_user
from support.postgres import postgres_schema
from support.servers import LiveServer, free_port
from support.timed_ingest import receive_at, register
from test_browser_pages import PHONE, RANGE, T, load_busy_day

try:
    from axe_playwright_python.sync_playwright import Axe
except ImportError:  # pragma: no cover - the dev extra installs it
    Axe = None

pytestmark = pytest.mark.browser

BLOCKING = ("serious", "critical")
PHONE_SIZE = {"width": 390, "height": 844}
DESK_SIZE = {"width": 1366, "height": 900}
SIZES = pytest.mark.parametrize("size", [PHONE_SIZE, DESK_SIZE], ids=["390", "1366"])

# The campaign tags of the busy day.
TAG, TAG2 = "spring-sale", "vip"


@pytest.fixture(scope="module")
def axe():
    if Axe is None:
        message = "axe-playwright-python is missing: make install"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Axe()


@contextmanager
def busy_site(request, folder, **config):
    """One app (with `config` added), the busy day with campaign tags and rejected bodies
    loaded, a test user and one live server, on the database the run is for; yields the
    live server and a requestId of the busy day, and stops them afterwards."""
    with ExitStack() as cleanup:
        if request.config.getoption("--db") == "postgresql":
            admin = request.getfixturevalue("postgres_admin")
            url = cleanup.enter_context(postgres_schema(admin))
        else:
            url = "sqlite:///" + str(folder / "viberwatch.db")
        app = create_app(
            {
                "TESTING": True,
                "SQLALCHEMY_DATABASE_URI": url,
                "SECRET_KEY": "test-secret",
                "SPOOL_FOLDER": str(folder / "spool"),
                "ARGON2_TIME_COST": 1,
                "ARGON2_MEMORY_COST": 8192,
                "ARGON2_PARALLELISM": 1,
                # The built-in alert rules, and a receiver that is down: notices with failed
                # attempts.
                "ALERT_URL": f"http://127.0.0.1:{free_port()}/hook",
                "ALERT_TIMEOUT": 1,
                **config,
            }
        )
        cleanup.callback(stop_app, app)
        with app.app_context():
            db.create_all()
        rid = load_busy_day(app)
        load_tags_and_rejections(app)
        create_test_user(app)
        load_accounts(app)
        server = LiveServer(app).start()
        cleanup.callback(server.stop)
        yield server, rid


@pytest.fixture(scope="module")
def site(request, tmp_path_factory):
    """One app, one data load and one live server for the whole module: the audit reads, but
    for the answers of the administration forms, which add a user or a token of their own.
    Yields the base URL and a requestId of the busy day."""
    with busy_site(request, tmp_path_factory.mktemp("a11y")) as (server, rid):
        yield server.url, rid


def load_tags_and_rejections(app) -> None:
    """Campaign tags on every busy day message (a later registration adds them), a body that
    fails validation and one refused for its token."""
    with app.app_context():
        for i in range(24):
            tags = [TAG2] if i % 4 == 3 else [TAG] if i % 3 else [TAG, TAG2]
            register(
                T + timedelta(seconds=30 * i, milliseconds=500),
                f"{i:02d}f6a7d49946094857ae02812969a83056",
                f"791000000{i % 6:02d}",
                text=f"Your order {1000 + i} has shipped",
                tags=tags,
            )
        receive_at(T, "dr", {"status": "read", "requestId": "<b>x</b>"})
        body = b'{"status": "seen", "requestId": "late-1", "sendTime": "2025-03-01 09:00:00"}'
        ingest.refuse("dr", body, "application/json", {}, "127.0.0.1", 401, "token missing")


def load_accounts(app) -> None:
    """Users of every role (one disabled) and API tokens (one revoked), each change in the
    audit log, for the administration pages."""
    with app.app_context():
        users.create_user("vera-viewer", TEST_PASSWORD, "viewer")
        users.create_user("otto-operator", TEST_PASSWORD, "operator")
        users.create_user("dora-disabled-operator", TEST_PASSWORD, "operator")
        users.disable_user("dora-disabled-operator")
        for name, scopes in (("crm-sync", "register"), ("reports", "read"), ("old", "send")):
            secrets_in_logs.add_secret(tokens.create_token(name, scopes)[1])
        tokens.revoke_token("old")


def stop_app(app) -> None:
    """What the `app` fixture does after a test."""
    secrets_in_logs.add_secrets_of(app.config)
    live.stop(app)
    ingest.stop(app)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="module")
def signed_in(browser, site):
    """The cookies of a session signed in through the real login form, for every tab."""
    base_url, _ = site
    context = browser.new_context(base_url=base_url)
    tab = context.new_page()
    tab.goto("/login")
    tab.fill("#username", TEST_USER)
    tab.fill("#password", TEST_PASSWORD)
    tab.click("button[type=submit]")
    tab.wait_for_url(lambda url: "/login" not in url)
    state = context.storage_state()
    context.close()
    return state


@pytest.fixture
def open_tab(browser, site, signed_in):
    """open_tab(size, scheme="light", signed=True): a fresh tab of that size and colour scheme."""
    contexts = []

    def open_(size, scheme="light", signed=True):
        context = browser.new_context(
            base_url=site[0],
            viewport=size,
            color_scheme=scheme,
            storage_state=signed_in if signed else None,
        )
        contexts.append(context)
        return context.new_page()

    yield open_
    for context in contexts:
        context.close()


# The administration pages (the signed-in user is an admin) and everyone's account page.
ADMIN_PAGES = ["/admin/users", "/admin/tokens", "/admin/audit", "/account"]
# Every page of the app (the JSON, CSV and metrics answers aside). {rid} is a busy day message.
PAGES = [
    "/",
    "/?status=failed",
    "/messages/{rid}",
    "/messages/no-such-message",
    "/conversations",
    f"/conversations/{PHONE}",
    f"/conversations/{PHONE}/reply",
    "/rejected",
    f"/analytics?{RANGE}",
    "/analytics",
    "/alerts",
    "/campaigns?range=all",
    f"/campaigns/show?tag={TAG}&range=all",
    f"/campaigns/compare?a={TAG}&b={TAG2}&ra=all",
    *ADMIN_PAGES,
]
# The pages audited in the dark colour scheme as well.
MAIN_PAGES = [
    "/",
    "/messages/{rid}",
    f"/conversations/{PHONE}",
    f"/analytics?{RANGE}",
    "/alerts",
    "/campaigns?range=all",
    f"/campaigns/show?tag={TAG}&range=all",
    *ADMIN_PAGES,
]

# Every chart on the page drawn by Chart.js.
CHARTS_DRAWN = """() => [...document.querySelectorAll('canvas')].every(
  c => window.Chart && Chart.getChart(c))"""


def settle(tab):
    """Wait until the page is as a user sees it: live updates connected, requests done, charts
    drawn."""
    if tab.locator("body[ws-connect]").count():
        tab.wait_for_selector("body[data-live-state=live]")
    tab.wait_for_load_state("networkidle")
    tab.wait_for_function(CHARTS_DRAWN)


def blocking_findings(axe, tab) -> list[str]:
    """The serious and critical violations, one line per element: rule, impact, selector."""
    results = axe.run(tab)
    lines = []
    for v in results.response["violations"]:
        if v["impact"] not in BLOCKING:
            continue
        for node in v["nodes"]:
            target = " ".join(str(t) for t in node["target"])
            lines.append(f"{v['id']} ({v['impact']}): {target} - {v['help']}")
    return lines


def audit(axe, tab, path) -> None:
    response = tab.goto(path)
    assert response is not None and response.status < 500, path
    settle(tab)
    found = blocking_findings(axe, tab)
    assert found == [], f"{path} at {tab.viewport_size['width']} px:\n" + "\n".join(found)


@SIZES
@pytest.mark.parametrize("path", PAGES)
def test_page_has_no_serious_or_critical_finding(axe, site, open_tab, path, size):
    audit(axe, open_tab(size), path.format(rid=site[1]))


# The dark scheme changes colours only: the desk width, where every column shows, is enough.
@pytest.mark.parametrize("path", MAIN_PAGES)
def test_page_in_the_dark_scheme_has_no_serious_or_critical_finding(axe, site, open_tab, path):
    tab = open_tab(DESK_SIZE, "dark")
    audit(axe, tab, path.format(rid=site[1]))
    assert tab.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")


@SIZES
def test_the_login_page_has_no_serious_or_critical_finding(axe, open_tab, size):
    audit(axe, open_tab(size, signed=False), "/login")


def test_the_login_page_in_the_dark_scheme_has_no_serious_or_critical_finding(axe, open_tab):
    audit(axe, open_tab(DESK_SIZE, "dark", signed=False), "/login")


# What the administration forms answer: a secret shown once, with its copy button, or the
# reason a change was refused. Each run makes a user or a token of its own.
ANSWERS = {
    "new user": ("/admin/users", "#new-username", "Create user", "#secret-value"),
    "new token": ("/admin/tokens", "#token-name", "Create token", "#secret-value"),
    "name taken": ("/admin/users", "#new-username", "Create user", "#form-error"),
}


@SIZES
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_an_administration_answer_has_no_serious_or_critical_finding(axe, open_tab, answer, size):
    path, field, button, shown = ANSWERS[answer]
    tab = open_tab(size)
    tab.goto(path)
    name = "vera-viewer" if answer == "name taken" else f"a11y-{answer[4:]}-{size['width']}"
    tab.fill(field, name)
    tab.click(f"button:text-is('{button}')")
    tab.locator(shown).wait_for()
    if shown == "#secret-value":
        secrets_in_logs.add_secret(tab.locator(shown).inner_text().strip())
    settle(tab)
    found = blocking_findings(axe, tab)
    assert found == [], f"{answer} at {size['width']} px:\n" + "\n".join(found)


@SIZES
def test_the_not_allowed_page_has_no_serious_or_critical_finding(axe, browser, site, size):
    """What a viewer is shown at an admin's page."""
    context = browser.new_context(base_url=site[0], viewport=size)
    try:
        tab = context.new_page()
        tab.goto("/login")
        tab.fill("#username", "vera-viewer")
        tab.fill("#password", TEST_PASSWORD)
        tab.click("button[type=submit]")
        tab.wait_for_url(lambda url: "/login" not in url)
        response = tab.goto("/admin/users")
        assert response is not None and response.status == 403
        settle(tab)
        found = blocking_findings(axe, tab)
        assert found == [], "\n".join(found)
    finally:
        context.close()
