"""A worker's event loop never waits on the ingest committer: with the committer stopped, or
busy behind a database lock, while webhooks (large ones too) keep arriving, /healthz, a static
file, the sign-in page and a live socket still answer within a second; bodies wait in the
loop's buffer and are applied once the committer reads again; past WEBHOOK_LOOP_BUFFER a
webhook is answered 503 at once. Through the real production command, on both databases."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from contextlib import contextmanager

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from app.records.models import Message, RawBody, db
from support.accounts import create_test_user
from support.bodies import DR, encoded, receipt
from support.live_client import LiveClient
from support.servers import committer_pid, production_process
from test_live_workers import session_cookie

TOKEN = "never-blocks-token"
PROBED = ("/healthz", "/static/app.css", "/login", "/ws")
# What "answers at once" means for a page while the committer cannot keep up.
WITHIN_SECONDS = 1.0


@pytest.fixture
def serve(app, app_config, tmp_path):
    """The production command, one worker (so every request meets the same event loop)."""

    create_test_user(app)

    def start(**env):
        base = {
            "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
            "VIBERWATCH_SECRET_KEY": app_config["SECRET_KEY"],
            "VIBERWATCH_WEBHOOK_TOKEN": TOKEN,
            "VIBERWATCH_WEBHOOK_EVENT_LOOP": "true",
            "VIBERWATCH_INGEST_WAIT_TIMEOUT": "60",
            "WEB_CONCURRENCY": "1",
            "GUNICORN_THREADS": "4",
        }
        log = tmp_path / f"gunicorn-{len(list(tmp_path.glob('gunicorn-*')))}.log"
        return production_process({**base, **env}, log, unset=("REDIS_URL",))

    return start


class Poster:
    """Clients posting receipts on kept-alive connections, each waiting for its answer."""

    def __init__(self, url: str, tag: str, clients: int, pad: int = 0, each: int = 1):
        self.url, self.tag, self.pad, self.each = url, tag, pad, each
        self.answers: dict[str, int] = {}
        self.responses: dict[str, httpx.Response] = {}
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)
        ]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            for j in range(self.each):
                rid = f"{self.tag}-{i}-{j}"
                try:
                    response = http.post(
                        f"{DR}?token={TOKEN}",
                        content=encoded(receipt(rid, pad=self.pad)),
                        headers={"Content-Type": "application/json"},
                    )
                    status = response.status_code
                    self.responses[rid] = response
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with self.lock:
                    self.answers[rid] = status

    def start(self) -> Poster:
        for t in self.threads:
            t.start()
        return self

    def join(self, seconds: float = 120) -> dict[str, int]:
        for t in self.threads:
            t.join(seconds)
        return self.answers


class Prober:
    """Asks for /healthz, a static file and the sign-in page, and opens a dashboard's live
    socket (until its first push), each on a new connection, over and over, and keeps the
    slowest answer of each."""

    def __init__(self, url: str):
        self.url = url
        self.cookie = session_cookie(url)
        self.slowest = dict.fromkeys(PROBED, 0.0)
        self.failures: list[str] = []
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for path in PROBED:
                started = time.monotonic()
                try:
                    if path == "/ws":
                        LiveClient(self.url, self.cookie).close()
                        continue
                    status = httpx.get(self.url + path, timeout=10).status_code
                    if status != 200:
                        self.failures.append(f"{path}: {status}")
                except Exception as exc:  # a timeout, a refused connection, a closed socket
                    self.failures.append(f"{path}: {type(exc).__name__}")
                finally:
                    seconds = time.monotonic() - started
                    self.slowest[path] = max(self.slowest[path], seconds)
                    self.count += 1
            self.stop.wait(0.1)

    @contextmanager
    def running(self):
        self.thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            self.thread.join(30)

    def assert_fast(self) -> None:
        assert self.count >= 3 * len(PROBED), self.count
        assert not self.failures, self.failures
        slow = {p: round(s, 3) for p, s in self.slowest.items() if s >= WITHIN_SECONDS}
        assert not slow, f"pages waited on the committer: {slow}"


class DatabaseLock:
    """Holds the lock that stops every write of raw bodies: ACCESS EXCLUSIVE on PostgreSQL's
    raw_body table, the write lock of a SQLite file."""

    def __init__(self, database_url: str):
        url = make_url(database_url)
        if url.get_backend_name() == "postgresql":
            self.conn = psycopg.connect(
                url.set(drivername="postgresql").render_as_string(hide_password=False)
            )
            self.conn.execute("LOCK TABLE raw_body IN ACCESS EXCLUSIVE MODE")
        else:
            self.conn = sqlite3.connect(url.database, isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.commit() if isinstance(self.conn, psycopg.Connection) else self.conn.execute(
            "COMMIT"
        )
        self.conn.close()


def stored(app, prefix: str) -> dict[str, str]:
    with app.app_context():
        try:
            rows = db.session.execute(
                db.select(Message.request_id, Message.status).where(
                    Message.request_id.like(prefix + "-%")
                )
            ).all()
            return dict(rows)
        finally:
            db.session.remove()


def wait_stored(app, prefix: str, count: int, seconds: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    while len(found := stored(app, prefix)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


@contextmanager
def stalled(stall: str, pid: int, database_url: str):
    """The committer stops reading: stopped itself, or held in a transaction by the lock."""
    if stall == "database lock":
        lock = DatabaseLock(database_url)
        release = lock.release
    else:
        os.kill(pid, signal.SIGSTOP)

        def release():
            os.kill(pid, signal.SIGCONT)

    try:
        yield
    finally:
        release()


@pytest.mark.parametrize("stall", ["database lock", "stopped committer"])
def test_a_stalled_committer_stalls_no_page(serve, app, database_url, stall):
    """The committer stops, or waits on the lock (on SQLite past its busy timeout, then it
    spools); bodies keep arriving, eight of 200 KB among them, which fill its socket many
    times over; pages answer throughout, and every body answered 200 is applied once the
    committer reads again."""
    env = {"VIBERWATCH_SQLITE_BUSY_TIMEOUT": "3", "VIBERWATCH_SPOOL_RETRY_SECONDS": "0.2"}
    with serve(**env) as (url, proc):
        prober = Prober(url)  # signed in before anything stalls
        with stalled(stall, committer_pid(proc.pid), database_url):
            big = Poster(url, "stall-big", clients=8, pad=200_000).start()
            small = Poster(url, "stall-small", clients=40, each=5).start()
            time.sleep(0.5)
            with prober.running():
                time.sleep(4)
        answers = {**big.join(), **small.join()}
        prober.assert_fast()
        assert len(answers) == 8 + 200 and set(answers.values()) == {200}, answers
        found = wait_stored(app, "stall-big", 8)
        found.update(wait_stored(app, "stall-small", 200))
        assert found.keys() == answers.keys()


@pytest.mark.parametrize("stall", ["database lock", "stopped committer"])
def test_past_the_loop_buffer_a_webhook_is_answered_503_at_once(serve, app, database_url, stall):
    """A committer that does not read keeps at most WEBHOOK_LOOP_BUFFER bytes waiting in a
    worker; a webhook past it is told at once to come back later, and is not kept."""
    env = {"VIBERWATCH_WEBHOOK_LOOP_BUFFER": str(600_000), "VIBERWATCH_SQLITE_BUSY_TIMEOUT": "30"}
    with serve(**env) as (url, proc):
        prober = Prober(url)
        with stalled(stall, committer_pid(proc.pid), database_url):
            # 200 KB bodies one after the other, each on its own connection, until one is
            # answered while the others wait: the buffer is full.
            posters = []
            for i in range(20):
                posters.append(Poster(url, f"full-{i}", clients=1, pad=200_000).start())
                time.sleep(0.3)
                if any(p.answers for p in posters):
                    break
            with prober.running():
                time.sleep(1.5)
        answers = {rid: status for p in posters for rid, status in p.join().items()}
    prober.assert_fast()
    turned = f"full-{len(posters) - 1}-0-0"
    assert 3 <= len(posters) < 20 and answers.pop(turned) == 503, answers
    busy = posters[-1].responses[turned]
    assert busy.json()["field"] == "body" and "not taken" in busy.json()["error"]
    assert busy.headers["X-Content-Type-Options"] == "nosniff"
    assert set(answers.values()) == {200}, answers
    for rid in answers:
        assert stored(app, rid.removesuffix("-0-0")) == {rid: "delivered"}
    with app.app_context():
        bodies = [bytes(b) for b in db.session.execute(db.select(RawBody.body)).scalars()]
    assert len(bodies) == len(answers) and not any(turned.encode() in b for b in bodies)
