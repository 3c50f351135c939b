"""One structured line per webhook request, as text or JSON lines."""
import json

import pytest

from conftest import fixture_json, post_json

DR = "/webhooks/viber/dr"


def lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "viberwatch.webhooks" in line
            or line.startswith("{")]


@pytest.fixture
def json_app(app_config):
    from app import create_app
    from app.models import db

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
        ("dr", "accepted", 200), ("dr", "duplicate", 200), ("dr", "rejected", 422),
        ("message", "accepted", 200)]
    assert records[0]["requestId"] == body["requestId"]
    assert records[3]["requestId"] == fixture_json("reply_text")["traceRequestId"]
    assert records[2]["requestId"] == body["requestId"]
    for r in records:
        assert r["message"] == "webhook" and r["logger"] == "viberwatch.webhooks"
        assert isinstance(r["durationMs"], (int, float)) and r["durationMs"] >= 0
        assert r["level"] in ("INFO",) and "time" in r


def test_refused_webhook_is_logged(app_config, capsys):
    from app import create_app
    from app.models import db

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
    assert " INFO viberwatch.webhooks webhook endpoint=dr requestId=f6a7d49946094857ae02812969a83056 " \
           "outcome=accepted status=200 durationMs=" in line
