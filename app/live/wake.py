"""Wake-up signals for the live tailer: they only cut latency, the poll keeps it correct.

A process that commits activity publishes a wake-up; every process listening wakes its
tailer, which then reads the activity log from its cursor. Publishing runs on a thread of
its own so that a webhook response never waits on Redis or PostgreSQL.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

import psycopg
import redis
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0


class Backend:
    """A wake-up channel between processes: `publish` from any thread, `listen` on its own."""

    name = "none"

    def __init__(self, wake: Callable[[], None], stopped: threading.Event):
        self.wake = wake
        self.stopped = stopped
        self.kick = threading.Event()
        self.listening = False
        # Set while the listener is subscribed: a wake-up published from then on arrives.
        self.subscribed = threading.Event()
        self.threads: list[threading.Thread] = []

    def start_publisher(self) -> None:
        self._thread(self._publish_forever, "publish")

    def start_listener(self) -> None:
        if not self.listening:
            self.listening = True
            self._thread(self._listen_forever, "listen")

    def _thread(self, target, label: str) -> None:
        thread = threading.Thread(target=target, name=f"live-{self.name}-{label}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def publish(self) -> None:
        """Ask the publisher thread to announce new activity; a burst collapses into one."""
        self.kick.set()

    def _publish_forever(self) -> None:
        while not self.stopped.is_set():
            if not self.kick.wait(1.0):
                continue
            self.kick.clear()
            try:
                self._publish()
            except Exception:  # the poll still delivers; retry on the next event
                log.warning("live %s publish failed", self.name, exc_info=True)
                self._reset_publisher()

    def _listen_forever(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except Exception:
                log.warning("live %s listener lost; retrying", self.name, exc_info=True)
            self.subscribed.clear()
            # Whatever was missed while reconnecting is read by the tailer's next pass.
            self.wake()
            self.stopped.wait(RETRY_SECONDS)

    def _publish(self) -> None:
        raise NotImplementedError

    def _reset_publisher(self) -> None:
        pass

    def _listen(self) -> None:
        raise NotImplementedError


class RedisBackend(Backend):
    """Redis pub/sub: works across hosts whatever the database."""

    name = "redis"

    def __init__(self, wake, stopped, url: str, channel: str):
        super().__init__(wake, stopped)
        self.redis = redis
        self.url = url
        self.channel = channel
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def _publish(self) -> None:
        self.client.publish(self.channel, b"1")

    def _listen(self) -> None:
        client = self.redis.Redis.from_url(self.url, socket_connect_timeout=5)
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            while not self.stopped.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                if message["type"] == "subscribe":  # the confirmation: subscribed from here on
                    self.subscribed.set()
                else:
                    self.wake()
        finally:
            pubsub.close()
            client.close()


class PostgresBackend(Backend):
    """PostgreSQL LISTEN/NOTIFY on the database the app already uses."""

    name = "postgresql"

    def __init__(self, wake, stopped, sqlalchemy_url: str, channel: str):
        super().__init__(wake, stopped)
        self.psycopg = psycopg
        url = make_url(sqlalchemy_url).set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.channel = channel
        self.conn = None

    def _connect(self):
        return self.psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)

    def _publish(self) -> None:
        if self.conn is None or self.conn.closed:
            self.conn = self._connect()
        self.conn.execute("SELECT pg_notify(%s, '')", (self.channel,))

    def _reset_publisher(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None

    def _listen(self) -> None:
        with self._connect() as conn:
            conn.execute(
                self.psycopg.sql.SQL("LISTEN {}").format(self.psycopg.sql.Identifier(self.channel))
            )
            self.subscribed.set()
            while not self.stopped.is_set():
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    self.wake()


class SqliteBackend(Backend):
    """SQLite has no notifications; `PRAGMA data_version` changes when another connection
    commits, so a cheap check on one connection wakes the tailer of every process sharing
    the file. Nothing to publish: the commit itself is the signal."""

    name = "sqlite"

    def __init__(self, wake, stopped, path: str, interval: float):
        super().__init__(wake, stopped)
        self.path = path
        self.interval = interval

    def start_publisher(self) -> None:
        pass

    def publish(self) -> None:
        pass

    def _listen(self) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            seen = conn.execute("PRAGMA data_version").fetchone()[0]
            self.subscribed.set()
            while not self.stopped.wait(self.interval):
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != seen:
                    seen = version
                    self.wake()
        finally:
            conn.close()


def choose(
    config: dict, database_url: str, wake: Callable[[], None], stopped: threading.Event
) -> Backend | None:
    """The cross-process wake-up for this configuration: Redis when REDIS_URL is set,
    else LISTEN/NOTIFY on PostgreSQL, else the SQLite file watch; None disables it."""
    channel = str(config["LIVE_CHANNEL"])
    redis_url = config.get("REDIS_URL")
    if redis_url:
        return RedisBackend(wake, stopped, str(redis_url), channel)
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return PostgresBackend(wake, stopped, database_url, channel)
    interval = float(config["LIVE_SQLITE_WATCH_INTERVAL"] or 0)
    if (
        url.get_backend_name() == "sqlite"
        and url.database
        and url.database != ":memory:"
        and interval > 0
    ):
        return SqliteBackend(wake, stopped, url.database, interval)
    return None
