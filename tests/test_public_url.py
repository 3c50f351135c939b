"""PUBLIC_URL: the address NXCLOUD and operators reach viberwatch at. Checked when the app
starts (http(s), a host, an optional path prefix; no user, query or fragment), and used for
every full URL the app shows: `viberwatch urls`, the webhook URLs on the empty pages, an
alert's link. Without it, the URLs are built as before."""

import json
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server

from app import create_app, ingest
from app.alerts import notices as alerts
from app.config import PUBLIC_URL_MAX
from app.records.models import db
from support.fixtures import fixture_bytes
from support.timed_ingest import receipt

JSON = {"Content-Type": "application/json"}
RULE = {"name": "expired", "kind": "expired_count", "threshold": 0, "window_minutes": 60}
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "given, kept",
    [
        ("https://watch.example.com/vw", "https://watch.example.com/vw"),
        ("https://watch.example.com/vw/", "https://watch.example.com/vw"),
        ("https://watch.example.com/", "https://watch.example.com"),
        ("  HTTPS://Watch.Example.COM:8443/Ops/VW//  ", "https://watch.example.com:8443/Ops/VW"),
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("http://[2001:db8::1]:8000/a%20b", "http://[2001:db8::1]:8000/a%20b"),
        ("", None),
    ],
)
def test_accepted_values_are_kept_without_a_trailing_slash(app_config, given, kept):
    app_config["PUBLIC_URL"] = given
    assert create_app(app_config).config["PUBLIC_URL"] == kept


@pytest.mark.parametrize(
    "given, reason",
    [
        ("javascript:alert(1)", "must start with https:// or http://"),
        ("javascript://watch.example.com/%0aalert(1)", "must start with https:// or http://"),
        ("ftp://watch.example.com", "must start with https:// or http://"),
        ("watch.example.com", "must start with https:// or http://"),
        ("//watch.example.com", "must start with https:// or http://"),
        ("https://watch.example.com/?token=1", "no query (?) or fragment (#)"),
        ("https://watch.example.com/vw#top", "no query (?) or fragment (#)"),
        ("https://watch.example.com?", "no query (?) or fragment (#)"),
        ("https://admin:secret@watch.example.com", "user name or password"),
        ("https://", "has no host"),
        ("https://watch.example.com:99999", "port"),
        ("https://exa<mple.com", "no host name or IP address"),
        ('https://watch.example.com/"><script>', "cannot hold unescaped"),
        ("https://watch.example.com/a/../b", ". or .. segments"),
        ("https://watch example.com", "printable ASCII without spaces"),
        ("https://wätch.example.com", "printable ASCII without spaces"),
        ("https://watch.example.com/" + "a" * PUBLIC_URL_MAX, f"longer than {PUBLIC_URL_MAX}"),
        (443, "is not a URL"),
    ],
)
def test_a_bad_value_stops_the_app_naming_the_setting(app_config, monkeypatch, given, reason):
    # Set in the environment, as production does (a number arrives as a number: JSON).
    monkeypatch.setenv("VIBERWATCH_PUBLIC_URL", str(given))
    with pytest.raises(ValueError, match=r"^PUBLIC_URL: ") as raised:
        create_app(app_config)
    assert reason in str(raised.value)
    # A password given in it is never repeated in the error.
    assert "secret" not in str(raised.value)


def urls(app, *args):
    result = app.test_cli_runner().invoke(args=["urls", *args])
    assert result.exit_code == 0, result.output
    return dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())


def test_urls_without_public_url_are_built_as_before(app_config):
    app_config["WEBHOOK_TOKEN"] = "tok/en+1"
    app = create_app(app_config)
    printed = urls(app, "--host", "example.com", "--port", "443")
    assert printed == {
        "dr_webhook": "http://example.com:443/webhooks/viber/dr?token=tok/en%2B1",
        "message_webhook": "http://example.com:443/webhooks/viber/message?token=tok/en%2B1",
        "dashboard": "http://example.com:443/",
    }
    # ...and say how to get them right behind TLS.
    result = app.test_cli_runner().invoke(args=["urls"])
    assert "set PUBLIC_URL" in result.stderr
    assert urls(app)["dashboard"] == "http://127.0.0.1:5000/"


def test_urls_under_public_url_with_its_prefix(app_config):
    app_config.update(PUBLIC_URL="https://watch.example.com/vw/", WEBHOOK_TOKEN="tok/en+1")
    app = create_app(app_config)
    assert urls(app) == {
        "dr_webhook": "https://watch.example.com/vw/webhooks/viber/dr?token=tok/en%2B1",
        "message_webhook": "https://watch.example.com/vw/webhooks/viber/message?token=tok/en%2B1",
        "dashboard": "https://watch.example.com/vw/",
    }
    # make run's banner gives --host and --port: where it listens is said too.
    banner = urls(app, "--host", "127.0.0.1", "--port", "5000")
    assert banner["dr_webhook"].startswith("https://watch.example.com/vw/webhooks/viber/dr")
    assert banner["listening"] == "http://127.0.0.1:5000/"
    assert "PUBLIC_URL" not in app.test_cli_runner().invoke(args=["urls"]).stderr


def test_public_url_option_overrides_the_setting_and_is_checked(app):
    printed = urls(app, "--public-url", "https://other.example.com:8443/")
    assert printed["dr_webhook"] == "https://other.example.com:8443/webhooks/viber/dr"
    assert printed["dashboard"] == "https://other.example.com:8443/"
    refused = app.test_cli_runner().invoke(args=["urls", "--public-url", "javascript:alert(1)"])
    assert refused.exit_code == 2 and "--public-url" in refused.output
    assert "https:// or http://" in refused.output


@pytest.fixture
def mounted(app_config):
    """The app served behind the path prefix /vw, as a reverse proxy at a path serves it."""
    app_config.update(PUBLIC_URL="https://watch.example.com/vw", WEBHOOK_TOKEN="s3cret-token")
    app = create_app(app_config)
    with app.app_context():
        db.create_all()
    server = make_server("127.0.0.1", 0, DispatcherMiddleware(app, {"/vw": app}), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)
    ingest.stop(app)
    with app.app_context():
        db.engine.dispose()


def test_the_printed_urls_reach_the_webhooks_under_the_prefix(mounted):
    app, local = mounted
    printed = urls(app)
    for name, fixture in (("dr_webhook", "dr_seen"), ("message_webhook", "reply_text")):
        url = printed[name].replace("https://watch.example.com", local)
        assert "/vw/webhooks/viber/" in url and "token=s3cret-token" in url
        answered = httpx.post(url, content=fixture_bytes(fixture), headers=JSON)
        assert answered.status_code == 200 and answered.text == "success"


def test_the_empty_pages_show_the_webhook_urls_under_public_url(client, app):
    app.config["PUBLIC_URL"] = "https://watch.example.com/vw"
    for path in ("/", "/conversations", "/rejected"):
        html = client.get(path).get_data(as_text=True)
        assert "https://watch.example.com/vw/webhooks/viber/dr" in html, path
        assert "http://localhost/webhooks" not in html, path


def test_the_empty_pages_show_the_request_host_without_public_url(client):
    html = client.get("/").get_data(as_text=True)
    assert "http://localhost/webhooks/viber/dr" in html


@pytest.mark.parametrize("public, link", [("https://watch.example.com/vw/", True), (None, False)])
def test_an_alert_links_to_the_alerts_page_under_public_url(app_config, public, link):
    built = create_app(
        {**app_config, "PUBLIC_URL": public, "ALERT_RULES": [RULE], "ALERT_INTERVAL": 0}
    )
    try:
        with built.app_context():
            db.create_all()
            receipt(T0, "pub-1", "expired")
            # Evaluated where no request is: a server's thread, `viberwatch alerts check`.
            [notice] = alerts.evaluate(T0 + timedelta(minutes=1))
            payload = json.loads(notice.payload)
            assert payload["state"] == "firing"
            assert payload["url"] == ("https://watch.example.com/vw/alerts" if link else None)
    finally:
        ingest.stop(built)
        with built.app_context():
            db.engine.dispose()
