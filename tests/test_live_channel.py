"""The live wake-up channel away: one log line when it is lost and one when it is back, /healthz
degraded and /metrics at 0 meanwhile, and every webhook still applied and pushed to every
dashboard, through the poll."""

import logging
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.live.wake import RETRY_SECONDS, RedisBackend, SqliteBackend
from app.records.models import Message, db
from support.accounts import create_test_user
from support.bodies import receipt
from support.live_client import LiveClient, post
from support.servers import LiveServer, free_port, production_process
from support.wait import until
from test_live_workers import session_cookie

DR = "/webhooks/viber/dr"
TOKEN = "live-channel-metrics-token"
WAKE_LOG = "viberwatch.live"
# The Debian redis-server package, for a server a test can stop and start again.
REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture
def app_config(app_config):
    app_config.update(
        {"METRICS_TOKEN": TOKEN, "LIVE_CHANNEL": "viberwatch_test_" + uuid.uuid4().hex[:12]}
    )
    return app_config


def nothing_listens() -> str:
    """A Redis URL on a loopback port that was free a moment ago: connections are refused."""
    return f"redis://127.0.0.1:{free_port()}/0"


def lines(app_logs) -> tuple[list[logging.LogRecord], list[logging.LogRecord]]:
    """The channel's "lost" and "back" records so far."""
    records = [r for r in app_logs.records if r.name == WAKE_LOG]
    lost = [r for r in records if " lost by the " in r.getMessage()]
    back = [r for r in records if r.getMessage().startswith("live wake-up channel redis back")]
    return lost, back


def health(url: str) -> dict:
    response = httpx.get(url + "/healthz", timeout=10)
    # Degraded is still 200: webhooks are applied and dashboards follow the poll.
    assert response.status_code == 200, response.text
    return response.json()


def live_state(url: str) -> str | None:
    return health(url).get("live", {}).get("state")


def channel_up(url: str) -> dict:
    """viberwatch_live_channel_up by channel, as /metrics reports it."""
    response = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    family = {f.name: f for f in text_string_to_metric_families(response.text)}.get(
        "viberwatch_live_channel_up"
    )
    return {s.labels["channel"]: s.value for s in family.samples} if family else {}


def applied(app, request_id: str) -> bool:
    with app.app_context():
        return db.session.get(Message, request_id) is not None


def test_a_channel_that_never_answers_is_one_line_without_a_traceback(app_logs):
    stopped = threading.Event()
    wakes = []
    backend = RedisBackend(lambda: wakes.append(1), stopped, nothing_listens(), "viberwatch_test")
    backend.start_publisher()
    backend.start_listener()
    try:
        for _ in range(30):
            backend.publish()
            time.sleep(0.02)
        until(lambda: backend.state() is not None, 10, "a try of the channel")
        # More failed tries: the publisher's own retries and the listener's.
        time.sleep(2 * RETRY_SECONDS + 0.5)
        state = backend.state()
    finally:
        stopped.set()
        for thread in backend.threads:
            thread.join(10)
    # The listener wakes the tailer after each failed try: it tried more than once.
    assert len(wakes) >= 2
    assert (state.channel, state.up) == ("redis", False)
    assert state.as_json()["state"] == "down" and state.as_json()["since_seconds"] >= 0
    lost, back = lines(app_logs)
    assert len(lost) == 1 and back == []
    (record,) = lost
    assert record.levelno == logging.WARNING and record.exc_info is None
    message = record.getMessage()
    assert "channel redis lost" in message and "ConnectionError" in message
    assert "\n" not in message and "Traceback" not in app_logs.text


@contextmanager
def redis_server(port: int, folder: Path):
    """A redis-server of the test's own on `port`, keeping nothing on disk."""
    if REDIS_SERVER is None:
        message = "redis-server is missing: install the Debian redis-server package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=1)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        until(answers, 10, "redis-server to answer")
        yield proc
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_redis_stopped_then_started_again(app_config, request, tmp_path, app_logs):
    port = free_port()
    app_config["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    app = request.getfixturevalue("app")
    create_test_user(app)
    server = LiveServer(app).start()
    socket = None
    try:
        with redis_server(port, tmp_path):
            # A dashboard, so that this process listens as well as publishes.
            socket = LiveClient(server.url, session_cookie(server.url), cursor=None)
            assert post(server.url, DR, receipt("before")) == 200
            until(lambda: live_state(server.url) == "ok", 10, "the channel in use")
            assert health(server.url)["status"] == "ok"
            assert health(server.url)["live"]["channel"] == "redis"
            assert channel_up(server.url) == {"redis": 1}
        for n in range(5):
            assert post(server.url, DR, receipt(f"away-{n}")) == 200
        until(lambda: live_state(server.url) == "down", 15, "the channel lost")
        body = health(server.url)
        assert body["status"] == "degraded" and body["database"] == "ok"
        assert body["live"]["since_seconds"] >= 0
        assert channel_up(server.url) == {"redis": 0}
        assert all(applied(app, f"away-{n}") for n in range(5))
        # Both the publisher and the listener have failed, more than once: one line.
        time.sleep(2 * RETRY_SECONDS + 0.5)
        lost, back = lines(app_logs)
        assert len(lost) == 1 and back == []
        assert lost[0].exc_info is None
        with redis_server(port, tmp_path):
            until(lambda: health(server.url)["status"] == "ok", 15, "the channel back")
            assert live_state(server.url) == "ok"
            assert channel_up(server.url) == {"redis": 1}
            lost, back = lines(app_logs)
            assert len(lost) == 1 and len(back) == 1
            assert back[0].levelno == logging.INFO and back[0].getMessage().endswith(
                "channel redis back"
            )
    finally:
        if socket is not None:
            socket.close()
        server.stop()


def test_healthz_and_metrics_report_a_channel_down_from_the_start(app_config, request):
    app_config["REDIS_URL"] = nothing_listens()
    app = request.getfixturevalue("app")
    server = LiveServer(app).start()
    try:
        # Not used yet by this process: nothing to report.
        assert "live" not in health(server.url) and health(server.url)["status"] == "ok"
        assert post(server.url, DR, receipt("first")) == 200
        until(lambda: "live" in health(server.url), 10, "the first wake-up tried")
        body = health(server.url)
        assert body["status"] == "degraded" and body["database"] == "ok"
        assert body["spool"]["bodies"] == 0
        assert body["live"]["channel"] == "redis" and body["live"]["state"] == "down"
        assert channel_up(server.url) == {"redis": 0}
        assert applied(app, "first")
    finally:
        server.stop()


@pytest.fixture
def gunicorn_without_redis(app, app_config, tmp_path):
    """The production command with two workers, on the test's database, its Redis away."""
    create_test_user(app)
    env = {
        "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
        "VIBERWATCH_SECRET_KEY": app_config["SECRET_KEY"],
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "16",
        "REDIS_URL": nothing_listens(),
        "VIBERWATCH_METRICS_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    log = tmp_path / "gunicorn.log"
    with production_process(env, log) as (url, master):
        yield url, log


def test_workers_without_redis_still_push_every_receipt(gunicorn_without_redis):
    url, log = gunicorn_without_redis
    cookie = session_cookie(url)
    sockets, pids = [], set()
    try:
        # The kernel spreads connections over the workers; open until both serve some.
        for _ in range(40):
            c = LiveClient(url, cookie, cursor=0, feed=True)
            sockets.append(c)
            pids.add(c.first.meta["pid"])
            if len(pids) == 2 and len(sockets) >= 6:
                break
        assert len(pids) == 2, "every socket landed on one worker"
        ids = [uuid.uuid4().hex for _ in range(5)]
        for a in ids:
            assert post(url, DR, receipt(a)) == 200
        for c in sockets:
            pushes = c.until(
                lambda ps: sum(1 for p in ps for i in p.ids() if i.startswith("act-")) >= 5
            )
            feed = [i for p in pushes for i in p.ids() if i.startswith("act-")]
            assert sorted(feed) == [f"act-{n}" for n in range(1, 6)]
            assert sorted(r[0] for p in pushes for r in p.rows()) == sorted(ids)
        # Each worker listens for its sockets, finds the channel down, and says so.
        for _ in range(6):
            body = httpx.get(url + "/healthz", headers={"Connection": "close"}).json()
            assert body["status"] == "degraded" and body["live"]["state"] == "down"
        until(lambda: channel_up(url) == {"redis": 0}, 10, "the gauge at 0")
    finally:
        for c in sockets:
            c.close()
    text = log.read_text()
    # One line per process at most (two workers and the ingest committer), never a traceback.
    assert 1 <= text.count("live wake-up channel redis lost") <= 3
    assert "Traceback" not in text


def test_the_sqlite_file_watch_is_quick_only_while_a_dashboard_is_open(tmp_path):
    """While the process has an open dashboard (`busy`), another process's commit wakes the
    tailer at the next quick check; with none, the file is checked only every `idle` seconds,
    so a commit does not wake it at the quick pace."""
    path = tmp_path / "watched.db"
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x)")
    writer.commit()
    for busy in (True, False):
        woken, stopped = threading.Event(), threading.Event()
        backend = SqliteBackend(woken.set, stopped, str(path), 0.01, lambda b=busy: b, idle=60)
        backend.start_listener()
        try:
            assert backend.subscribed.wait(10)
            woken.clear()  # (a listener wakes the tailer once when it starts)
            writer.execute("INSERT INTO t VALUES (1)")
            writer.commit()
            # Busy: woken within a few checks. Idle: not before the next check, a minute on.
            assert woken.wait(10 if busy else 1) is busy
        finally:
            stopped.set()
            for thread in backend.threads:
                thread.join(70)
    writer.close()
