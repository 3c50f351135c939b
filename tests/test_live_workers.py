"""Live updates across processes: gunicorn workers, and the wake-up between processes."""

import os
import re
import uuid

import httpx
import pytest

from app import create_app
from app.core.services import services
from app.live import views as live
from app.records.models import db
from support.accounts import TEST_PASSWORD, TEST_USER, create_test_user
from support.bodies import receipt
from support.live_client import LiveClient, post
from support.servers import LiveServer, production_server

DR = "/webhooks/viber/dr"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def session_cookie(base_url: str) -> str:
    """Sign in through the real login form over HTTP; the session cookie it sets."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        token = CSRF_RE.search(http.get("/login").text).group(1)
        r = http.post(
            "/login", data={"username": TEST_USER, "password": TEST_PASSWORD, "csrf_token": token}
        )
        assert r.status_code == 302, r.text
        return "; ".join(f"{k}={v}" for k, v in http.cookies.items())


@pytest.fixture
def gunicorn(app, app_config, tmp_path):
    """The production command with two workers, on the test's database."""
    create_test_user(app)
    env = {
        "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
        "VIBERWATCH_SECRET_KEY": app_config["SECRET_KEY"],
        "WEB_CONCURRENCY": "2",
        # Each socket holds a thread: enough for every socket the test may open on one worker.
        "GUNICORN_THREADS": "48",
    }
    with production_server(env, tmp_path / "gunicorn.log", unset=("REDIS_URL",)) as url:
        yield url


def test_dashboards_on_different_workers_all_see_every_event(gunicorn):
    cookie = session_cookie(gunicorn)
    sockets, pids = [], set()
    try:
        # The kernel spreads connections over the workers; open until both serve some.
        for _ in range(40):
            c = LiveClient(gunicorn, cookie, cursor=0, feed=True)
            sockets.append(c)
            pids.add(c.first.meta["pid"])
            if len(pids) == 2 and len(sockets) >= 6:
                break
        assert len(pids) == 2, "every socket landed on one worker"
        ids = [uuid.uuid4().hex for _ in range(5)]
        for a in ids:
            assert post(gunicorn, DR, receipt(a)) == 200
        for c in sockets:
            pushes = c.until(
                lambda ps: sum(1 for p in ps for i in p.ids() if i.startswith("act-")) >= 5
            )
            feed = [i for p in pushes for i in p.ids() if i.startswith("act-")]
            assert sorted(feed) == [f"act-{n}" for n in range(1, 6)]
            assert sorted(r[0] for p in pushes for r in p.rows()) == sorted(ids)
    finally:
        for c in sockets:
            c.close()


def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_ready() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(redis_url(), socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.mark.parametrize("backend", ["database", "redis"])
def test_wake_up_reaches_another_process_without_the_poll(app, app_config, live_server, backend):
    """Two app instances on one database stand for two processes. The watcher's poll is an
    hour, so only the wake-up (SQLite file watch or PostgreSQL NOTIFY, or Redis) can deliver."""
    if backend == "redis" and not redis_ready():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {redis_url()}")
        pytest.skip("no Redis server")
    channel = "viberwatch_test_" + uuid.uuid4().hex[:12]
    config = {**app_config, "LIVE_POLL_INTERVAL": 3600, "LIVE_CHANNEL": channel}
    if backend == "redis":
        config.update(REDIS_URL=redis_url(), LIVE_SQLITE_WATCH_INTERVAL=0)
    watcher = create_app(config)
    create_test_user(app)
    server = LiveServer(watcher).start()
    sender = create_app({**config, "LIVE_POLL_INTERVAL": 3600})
    try:
        from support.live_client import LiveClient as Client

        cookie = session_cookie(server.url)
        c = Client(server.url, cookie, cursor=None)
        hub = services(watcher).live
        expected = {
            "database": "postgresql"
            if "postgresql" in app_config["SQLALCHEMY_DATABASE_URI"]
            else "sqlite",
            "redis": "redis",
        }[backend]
        assert hub.backend is not None and hub.backend.name == expected
        # The sender has no socket of its own: it publishes all the same.
        sender_server = LiveServer(sender).start()
        try:
            assert hub.backend.subscribed.wait(10), "the watcher never subscribed"
            a = uuid.uuid4().hex
            post(sender_server.url, DR, receipt(a))
            pushes = c.until(lambda ps: any(r[0] == a for p in ps for r in p.rows()), timeout=20)
            assert pushes
        finally:
            sender_server.stop()
        c.close()
    finally:
        server.stop()
        for x in (watcher, sender):
            live.stop(x)
            with x.app_context():
                db.engine.dispose()
