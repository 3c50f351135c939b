"""One structured line per webhook request, as text or JSON lines."""

import json

import pytest

from support.bodies import post_json
from support.fixtures import fixture_json

DR = "/webhooks/viber/dr"


def lines(capsys) -> list[str]:
    return [
        line
        for line in capsys.readouterr().err.splitlines()
        if "viberwatch.webhooks" in line or line.startswith("{")
    ]


@pytest.fixture
def json_app(app_config):
    from app import create_app
    from app.records.models import db

    app = create_app({**app_config, "LOG_JSON": True})
    with app.app_context():
        db.create_all()
    return app


def test_json_line_per_webhook(json_app, capsys):
    client = json_app.test_client()
    body = fixture_json("dr_seen")
    post_json(client, DR, body)
    post_json(client, DR, body)
    post_json(client, DR, {**body, "code": "x"})
    post_json(client, "/webhooks/viber/message", fixture_json("reply_text"))
    client.get("/healthz")  # not a webhook: no line
    records = [json.loads(line) for line in lines(capsys)]
    assert [(r["endpoint"], r["outcome"], r["status"]) for r in records] == [
        ("dr", "accepted", 200),
        ("dr", "duplicate", 200),
        ("dr", "rejected", 422),
        ("message", "accepted", 200),
    ]
    assert records[0]["requestId"] == body["requestId"]
    assert records[3]["requestId"] == fixture_json("reply_text")["traceRequestId"]
    assert records[2]["requestId"] == body["requestId"]
    for r in records:
        assert r["message"] == "webhook" and r["logger"] == "viberwatch.webhooks"
        assert isinstance(r["durationMs"], (int, float)) and r["durationMs"] >= 0
        assert r["level"] in ("INFO",) and "time" in r


def test_refused_webhook_is_logged(app_config, capsys):
    from app import create_app
    from app.records.models import db

    app = create_app({**app_config, "LOG_JSON": "1", "WEBHOOK_TOKEN": "hook-token"})
    with app.app_context():
        db.create_all()
    response = post_json(app.test_client(), DR + "?token=wrong", fixture_json("dr_seen"))
    assert response.status_code in (401, 403)
    [record] = [json.loads(line) for line in lines(capsys)]
    assert record["outcome"] == "refused" and record["status"] == response.status_code
    assert record["requestId"] is None


def test_plain_text_line(app, anon_client, capsys):
    post_json(anon_client, DR, fixture_json("dr_failed"))
    [line] = lines(capsys)
    assert (
        " INFO viberwatch.webhooks webhook endpoint=dr requestId=f6a7d49946094857ae02812969a83056 "
        "outcome=accepted status=200 durationMs=" in line
    )


SECRET = "s3cret-Token_9"


def raw_post(base_url: str, target: str):
    """POST a receipt to exactly this request target (no client normalises its escapes)."""
    import http.client
    from urllib.parse import urlsplit

    conn = http.client.HTTPConnection(urlsplit(base_url).netloc, timeout=10)
    conn.request(
        "POST",
        target,
        body=json.dumps(fixture_json("dr_seen")),
        headers={"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_the_development_server_log_never_shows_the_token(app_config, caplog):
    """`viberwatch run` logs each request line; ?token= is redacted, however it is spelled."""
    import httpx

    from app import create_app
    from app.records.models import db
    from support.servers import LiveServer

    app = create_app({**app_config, "WEBHOOK_TOKEN": SECRET})
    with app.app_context():
        db.create_all()
    server = LiveServer(app).start()
    try:
        with caplog.at_level("INFO", logger="werkzeug"):
            for query in (f"?token={SECRET}", f"?x=1&tok%65n={SECRET}"):
                assert raw_post(server.url, DR + query).status == 200
            assert (
                httpx.post(
                    server.url + DR + "?token=wrong-guess", json=fixture_json("dr_seen")
                ).status_code
                == 401
            )
    finally:
        server.stop()
        with app.app_context():
            db.engine.dispose()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "werkzeug")
    assert logged.count("=[redacted]") == 3
    assert SECRET not in logged and "wrong-guess" not in logged


def server_env(app_config) -> dict:
    """The production command, one worker, on the test's database, with SECRET as token."""
    return {
        "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
        "VIBERWATCH_SECRET_KEY": "k",
        "VIBERWATCH_WEBHOOK_TOKEN": SECRET,
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "4",
    }


def test_the_production_access_log_never_shows_the_token(app_config, tmp_path):
    """gunicorn's access log, through gunicorn.conf.py's logger class."""
    import httpx

    from support.servers import production_server

    access = tmp_path / "access.log"
    env = server_env(app_config)
    from app import create_app
    from app.records.models import db

    app = create_app(app_config)
    with app.app_context():
        db.create_all()
        db.engine.dispose()
    with production_server(
        env, tmp_path / "gunicorn.log", unset=("REDIS_URL",), access_log=access
    ) as url:
        for query in (f"?token={SECRET}", f"?tok%65n={SECRET}"):
            assert raw_post(url, DR + query).status == 200
        headers = {"X-Webhook-Token": SECRET, "Referer": f"https://example.org/?token={SECRET}"}
        assert (
            httpx.post(url + DR, json=fixture_json("dr_seen"), headers=headers).status_code == 200
        )
    logged = access.read_text()
    assert logged.count("POST /webhooks/viber/dr") == 3
    assert "token=[redacted]" in logged and SECRET not in logged


def test_gunicorns_error_log_never_shows_the_token(app_config, tmp_path):
    """A request line gunicorn refuses is written to its error log: the token is redacted
    there too."""
    import socket

    from support.servers import production_server

    env = server_env(app_config)
    log = tmp_path / "gunicorn.log"
    with production_server(env, log, unset=("REDIS_URL",)) as url:
        host, port = url.removeprefix("http://").split(":")
        for line in (
            f"POST /webhooks/viber/dr?token={SECRET}&x=\x01 HTTP/1.1",
            f"POST /webhooks/viber/dr?x=1&token={SECRET} HTTP/9.9",
        ):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    line.encode("latin-1") + b"\r\nHost: test\r\nContent-Length: 0\r\n\r\n"
                )
                assert sock.recv(100).startswith(b"HTTP/1.1 400")
    logged = log.read_text(errors="replace")
    assert logged.count("Invalid request from ip=") == 2, logged
    assert "token=[redacted]" in logged and SECRET not in logged
