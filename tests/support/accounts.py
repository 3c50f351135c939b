"""A user of the dashboard, signed in through the real login form."""

import re

from flask import session
from flask_wtf.csrf import generate_csrf

from app.auth import users

TEST_USER = "operator"
TEST_PASSWORD = "correct horse battery"
CSRF_INPUT_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def create_test_user(app, username=TEST_USER, password=TEST_PASSWORD, role="admin"):
    with app.app_context():
        if users.find_user(username) is None:
            users.create_user(username, password, role)


def login_form_token(client) -> str:
    page = client.get("/login")
    assert page.status_code == 200
    return CSRF_INPUT_RE.search(page.get_data(as_text=True)).group(1)


def csrf_token_of(app, client) -> str:
    """The signed CSRF token a page would render for this client's session."""
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
