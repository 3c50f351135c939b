import json
import os
import re
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from app import create_app
from app.models import db

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_bytes(name: str) -> bytes:
    """A documented NXCLOUD example, byte for byte as the webhook page prints it."""
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture_json(name: str) -> dict:
    return json.loads(fixture_bytes(name))


def pytest_addoption(parser):
    parser.addoption(
        "--db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="database of the suite: a SQLite file per test, or a fresh schema per "
        "test in the PostgreSQL database named by TEST_DATABASE_URL",
    )


@pytest.fixture(scope="session")
def postgres_admin(request):
    """An autocommit connection to TEST_DATABASE_URL, on the PostgreSQL pass only."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        raise pytest.UsageError("--db postgresql needs TEST_DATABASE_URL")
    import psycopg
    from sqlalchemy.engine import make_url

    conn = psycopg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    )
    yield conn, url
    conn.close()


@contextmanager
def postgres_schema(admin_and_url):
    """The URL of a fresh schema in the TEST_DATABASE_URL database, dropped afterwards."""
    from sqlalchemy.engine import make_url

    admin, url = admin_and_url
    schema = "vwtest_" + uuid.uuid4().hex[:16]
    admin.execute(f'CREATE SCHEMA "{schema}"')
    # Every connection of the test (app, CLI, worker processes) sees only this schema.
    yield (
        make_url(url)
        .set(drivername="postgresql+psycopg")
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    admin.execute("SET lock_timeout = '10s'")
    admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def database_url(request, tmp_path):
    """SQLite file in tmp_path, or (with --db postgresql) a schema of its own on PostgreSQL."""
    if request.config.getoption("--db") != "postgresql":
        yield "sqlite:///" + str(tmp_path / "viberwatch.db")
        return
    with postgres_schema(request.getfixturevalue("postgres_admin")) as url:
        yield url


@pytest.fixture
def app_config(database_url, tmp_path):
    """The mapping handed to create_app; tests may update it before `app` is built."""
    return {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SECRET_KEY": "test-secret",
        "SPOOL_FOLDER": str(tmp_path / "spool"),
        # Cheap Argon2id parameters: the same code path, a fraction of the cost per test.
        "ARGON2_TIME_COST": 1,
        "ARGON2_MEMORY_COST": 8192,
        "ARGON2_PARALLELISM": 1,
    }


@pytest.fixture
def app(app_config):
    app = create_app(app_config)
    with app.app_context():
        db.create_all()
    yield app
    from app import ingest, live

    live.stop(app)  # the live tailer of this app, if a socket started it
    ingest.stop(app)  # the ingest writer of this app, if a body started it
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


TEST_USER = "operator"
TEST_PASSWORD = "correct horse battery"
CSRF_INPUT_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def create_test_user(app, username=TEST_USER, password=TEST_PASSWORD):
    from app import auth

    with app.app_context():
        if auth.find_user(username) is None:
            auth.create_user(username, password)


def login_form_token(client) -> str:
    page = client.get("/login")
    assert page.status_code == 200
    return CSRF_INPUT_RE.search(page.get_data(as_text=True)).group(1)


def csrf_token_of(app, client) -> str:
    """The signed CSRF token a page would render for this client's session."""
    from flask import session
    from flask_wtf.csrf import generate_csrf

    with client.session_transaction() as sess:
        raw = sess["csrf_token"]
    with app.test_request_context():
        session["csrf_token"] = raw
        return generate_csrf()


def log_in(app, client, username=TEST_USER, password=TEST_PASSWORD):
    """Sign in through the real /login form, then send X-CSRFToken on every request, as
    base.html makes htmx do."""
    response = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": login_form_token(client)},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    client.environ_base["HTTP_X_CSRFTOKEN"] = csrf_token_of(app, client)
    return client


@pytest.fixture
def client(app):
    """A signed-in test client. CSRF stays enabled: it sends the X-CSRFToken header."""
    create_test_user(app)
    return log_in(app, app.test_client())


@pytest.fixture
def api_token(app) -> str:
    """A bearer token for the JSON API, made as `viberwatch create-token` makes it."""
    from app import auth

    with app.app_context():
        return auth.create_token("tests")[1]


@pytest.fixture
def anon_client(app):
    """A test client that has not signed in."""
    return app.test_client()


def post_json(client, path, body, content_type="application/json", **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, data=data, content_type=content_type, **kwargs)


class LiveServer:
    """A real threaded HTTP server for any WSGI app, on a free port of 127.0.0.1."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll interval: shutdown() waits up to one interval.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def live_server(app):
    server = LiveServer(app).start()
    yield server
    server.stop()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    """The Debian chromium, driven by Playwright (its own browser download is never used).

    Module scope: Playwright's sync API keeps an event loop running while it is started,
    which would break later tests that use asyncio or start Playwright themselves."""
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: install the Debian chromium package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def signed_in_tab(browser, app, base_url, **context_options):
    """A new browser context and tab on `base_url`, signed in through the real login form."""
    context = browser.new_context(base_url=base_url, **context_options)
    tab = context.new_page()
    create_test_user(app)
    tab.goto("/login")
    tab.fill("#username", TEST_USER)
    tab.fill("#password", TEST_PASSWORD)
    tab.click("button[type=submit]")
    tab.wait_for_url(lambda url: "/login" not in url)
    return context, tab


# The Content-Security-Policy forbids inline styles and scripts; a violation is an error here
# even where Chromium would only count it.
REPORT_CSP = """document.addEventListener("securitypolicyviolation", e =>
  console.error(`CSP violation: ${e.violatedDirective} by ${e.sourceFile}:${e.lineNumber}`));"""


def watch_console(page) -> list[str]:
    """Console errors, uncaught exceptions and CSP violations of the pages opened from now on
    (the signed-in landing page is left first)."""
    page.goto("about:blank")
    page.context.add_init_script(REPORT_CSP)
    problems = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return problems


@pytest.fixture
def page(browser, live_server, app):
    """A fresh browser tab, signed in, whose relative URLs go to the live server."""
    context, tab = signed_in_tab(browser, app, live_server.url)
    yield tab
    context.close()
