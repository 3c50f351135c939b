import pytest

from app import create_app
from app.records.models import db


def test_healthz_ok_when_database_reachable(app):
    client = app.test_client()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "database": "ok",
        "spool": {"bodies": 0, "oldest_seconds": 0, "damaged_files": 0},
    }


def test_healthz_degraded_while_the_spool_takes_bodies_503_when_it_cannot(tmp_path):
    # A SQLite file inside a directory that does not exist cannot be opened.
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(tmp_path / "missing" / "x.db"),
        "SPOOL_FOLDER": str(tmp_path / "spool"),
    }
    app = create_app(config)
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "degraded",
        "database": "unreachable",
        "spool": {"bodies": 0, "oldest_seconds": 0, "damaged_files": 0},
    }
    with app.app_context():
        db.engine.dispose()
    # A spool folder under a plain file cannot be made, whoever runs the test.
    (tmp_path / "a-file").write_text("")
    app = create_app({**config, "SPOOL_FOLDER": str(tmp_path / "a-file" / "spool")})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
    with app.app_context():
        db.engine.dispose()


def test_healthz_when_postgres_unreachable(tmp_path):
    # Port 9 on loopback: nothing listens there, so the connection is refused at once.
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://postgres@127.0.0.1:9/none"
            "?connect_timeout=2",
            "SPOOL_FOLDER": str(tmp_path / "spool"),
        }
    )
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["database"] == "unreachable"
    assert response.get_json()["status"] == "degraded"


def test_noop_endpoint_only_when_enabled(app_config):
    off = create_app(app_config).test_client()
    assert off.post("/bench/noop", data=b"{}", content_type="application/json").status_code == 404
    on = create_app({**app_config, "BENCH_NOOP": True}).test_client()
    response = on.post("/bench/noop", data=b"{}", content_type="application/json")
    assert response.status_code == 200 and response.data == b"success"


def test_proxy_fix_trusts_forwarded_headers_only_when_configured(app_config):
    headers = {
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "viberwatch.example",
    }
    seen = {}

    def probed(app):
        # Recorded on /healthz, which needs no login, as the app sees the request.
        @app.before_request
        def _record():
            from flask import request, url_for

            seen["remote"] = request.remote_addr
            seen["url"] = url_for("health.healthz", _external=True)

        return app

    direct = {"remote": "127.0.0.1", "url": "http://localhost/healthz"}
    probed(create_app(app_config)).test_client().get("/healthz", headers=headers)
    assert seen == direct
    # The test client's peer is 127.0.0.1: a trusted proxy here, a stranger there.
    trusted = {**app_config, "PROXY_FIX": 1, "TRUSTED_PROXIES": "127.0.0.1"}
    probed(create_app(trusted)).test_client().get("/healthz", headers=headers)
    assert seen == {"remote": "203.0.113.7", "url": "https://viberwatch.example/healthz"}
    stranger = {**app_config, "PROXY_FIX": 1, "TRUSTED_PROXIES": "10.0.0.1"}
    probed(create_app(stranger)).test_client().get("/healthz", headers=headers)
    assert seen == direct


def test_proxy_fix_without_trusted_proxies_is_a_startup_error(app_config):
    """Otherwise X-Forwarded-For would be believed from any peer."""
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        create_app({**app_config, "PROXY_FIX": 1})


def test_a_request_whose_connection_died_is_answered_not_500(app):
    """The database went away while a request held its connection: ending the request's
    session must not turn a finished answer into a 500."""
    from sqlalchemy import text

    from app.auth.guard import public

    @app.get("/probe-connection-dies")
    @public
    def dies():
        db.session.execute(text("SELECT 1"))
        db.session.connection().connection.dbapi_connection.close()  # as a database that went down
        return "answered"

    response = app.test_client().get("/probe-connection-dies")
    assert (response.status_code, response.get_data()) == (200, b"answered")
