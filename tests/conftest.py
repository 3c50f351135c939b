"""The fixtures of the suite: the app on a SQLite file or a PostgreSQL schema of its own,
signed-in clients, a live server, Chromium and a fake NXCLOUD. What they are built from is
in tests/support/."""

import logging
import os

import psycopg
import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy.engine import make_url

from app import create_app, ingest
from app.auth import tokens
from app.live import views as live
from app.records.models import db
from support import secrets_in_logs
from support.accounts import TEST_PASSWORD, create_test_user, log_in
from support.browser import CHROMIUM, CHROMIUM_ARGS, signed_in_tab
from support.fake_nxcloud import fake_nxcloud  # noqa: F401 (a fixture for every module)
from support.outage import Outage
from support.postgres import postgres_schema
from support.servers import LiveServer


def pytest_addoption(parser):
    parser.addoption(
        "--db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="database of the suite: a SQLite file per test, or a fresh schema per "
        "test in the PostgreSQL database named by TEST_DATABASE_URL",
    )


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log():
    """After the suite: no webhook token, API token, password or key the tests used appears
    in any log line a server wrote (gunicorn's logs, the app's loggers in this process)."""
    handler = secrets_in_logs.start()
    secrets_in_logs.add_secret(TEST_PASSWORD)
    yield
    secrets_in_logs.stop(handler)
    leaks = secrets_in_logs.leaks()
    assert not leaks, "secrets written to logs:\n" + "\n".join(leaks)


# The app's own loggers: formatted by the app (app/observability/logs.py), they do not
# propagate to the root logger, where caplog listens.
APP_LOGGERS = ("viberwatch.webhooks", "viberwatch.spool", "viberwatch.live")


@pytest.fixture
def app_logs(caplog):
    """caplog, also given every record of the app's own loggers (once each)."""
    loggers = [logging.getLogger(name) for name in APP_LOGGERS]
    saved = [(lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(caplog.handler)
        lg.propagate = False
        lg.setLevel(logging.DEBUG)
    yield caplog
    for lg, (propagate, level) in zip(loggers, saved, strict=True):
        lg.removeHandler(caplog.handler)
        lg.propagate, lg.level = propagate, level


@pytest.fixture(scope="session")
def postgres_admin(request):
    """An autocommit connection to TEST_DATABASE_URL, on the PostgreSQL pass only."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        raise pytest.UsageError("--db postgresql needs TEST_DATABASE_URL")
    conn = psycopg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    )
    yield conn, url
    conn.close()


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
def outage(database_url, app_config):
    """The test's database made to go away (`begin`) and come back (`end`); the app is
    configured to notice quickly."""
    o = Outage(database_url)
    app_config.update(o.config)
    yield o
    o.close()


@pytest.fixture
def app(app_config):
    app = create_app(app_config)
    with app.app_context():
        db.create_all()
    yield app
    secrets_in_logs.add_secrets_of(app.config)
    live.stop(app)  # the live tailer of this app, if a socket started it
    ingest.stop(app)  # the ingest writer of this app, if a body started it
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    """A signed-in test client. CSRF stays enabled: it sends the X-CSRFToken header."""
    create_test_user(app)
    return log_in(app, app.test_client())


@pytest.fixture
def api_token(app) -> str:
    """A bearer token for the JSON API, made as `viberwatch create-token` makes it."""
    with app.app_context():
        token = tokens.create_token("tests")[1]
    secrets_in_logs.add_secret(token)
    return token


@pytest.fixture
def anon_client(app):
    """A test client that has not signed in."""
    return app.test_client()


@pytest.fixture
def live_server(app):
    server = LiveServer(app).start()
    yield server
    server.stop()


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
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server, app):
    """A fresh browser tab, signed in, whose relative URLs go to the live server."""
    context, tab = signed_in_tab(browser, app, live_server.url)
    yield tab
    context.close()
