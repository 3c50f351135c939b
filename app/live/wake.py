"""Wake-up signals for the live tailer: they only cut latency, the poll keeps it correct.

A process that commits activity publishes a wake-up; every process listening wakes its
tailer, which then reads the activity log from its cursor. Publishing runs on a thread of
its own so that a webhook response never waits on Redis or PostgreSQL. Each backend keeps
whether the channel answered its last try (for /healthz and /metrics) and logs one line when
the channel is lost and one when it is back, however many tries fail in between.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import redis
from sqlalchemy.engine import make_url

# The operator's line when the channel is lost or back, named as the service's other
# operator-facing loggers (viberwatch.webhooks, viberwatch.spool).
log = logging.getLogger("viberwatch.live")

RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class ChannelState:
    """What a process last found of its wake-up channel: `up` when its publisher and its
    listener (those it runs) both reached it on their last try; `since` is when that last
    changed (time.monotonic())."""

    channel: str
    up: bool
    since: float

    def as_json(self) -> dict:
        return {
            "channel": self.channel,
            "state": "ok" if self.up else "down",
            "since_seconds": round(time.monotonic() - self.since, 3),
        }


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
        # "publisher" and "listener": whether each one's last try reached the channel.
        self._reached: dict[str, bool] = {}
        self._since = time.monotonic()
        self._state_lock = threading.Lock()
        self._pid = os.getpid()

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
        # A wake-up that did not go out is tried again every RETRY_SECONDS, new activity or
        # not, so that the channel is known to be back as soon as it is.
        owed = False
        while not self.stopped.is_set():
            if not self.kick.wait(RETRY_SECONDS if owed else 1.0) and not owed:
                continue
            if self.stopped.is_set():
                break
            self.kick.clear()
            try:
                self._publish()
            except Exception as exc:  # the poll still delivers
                self._tried("publisher", exc)
                self._reset_publisher()
                owed = True
            else:
                self._tried("publisher", None)
                owed = False

    def _listen_forever(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except Exception as exc:
                self._tried("listener", exc)
            self.subscribed.clear()
            # Whatever was missed while reconnecting is read by the tailer's next pass.
            self.wake()
            self.stopped.wait(RETRY_SECONDS)

    def _listening(self) -> None:
        """Called by `_listen` once wake-ups published from now on arrive."""
        self.subscribed.set()
        self._tried("listener", None)

    def _tried(self, use: str, error: Exception | None) -> None:
        """Record a try of the publisher or the listener; log only when the channel changes."""
        with self._state_lock:
            before = self._up()
            self._reached[use] = error is None
            after = self._up()
            if before == after:
                return
            self._since = time.monotonic()
        if error is not None:
            # One line, no traceback: the cause is the channel, and it repeats every try.
            reason = " ".join(f"{type(error).__name__}: {error}".split())
            log.warning(
                "live wake-up channel %s lost by the %s (%s); live updates follow the poll "
                "until it is back",
                self.name,
                use,
                reason,
            )
        elif before is False:
            log.info("live wake-up channel %s back", self.name)

    def _up(self) -> bool | None:
        return all(self._reached.values()) if self._reached else None

    def state(self) -> ChannelState | None:
        """The channel as this process last found it; None before its first try (and in a
        process forked from the one that made this backend, whose threads it does not have)."""
        with self._state_lock:
            up = self._up()
            if up is None or self._pid != os.getpid():
                return None
            return ChannelState(self.name, up, self._since)

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
                    self._listening()
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
            self._listening()
            while not self.stopped.is_set():
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    self.wake()


class SqliteBackend(Backend):
    """SQLite has no notifications; `PRAGMA data_version` changes when another connection
    commits, so a cheap check on one connection wakes the tailer of every process sharing
    the file. Nothing to publish: the commit itself is the signal.

    The check runs every `interval` seconds while `busy()` (this process has an open
    dashboard), else every `idle` seconds: waking a thread a hundred times a second costs
    about 1-2 % of a core, worth paying only while a page waits for the rows."""

    name = "sqlite"

    def __init__(
        self,
        wake,
        stopped,
        path: str,
        interval: float,
        busy: Callable[[], bool] = lambda: True,
        idle: float = 1.0,
    ):
        super().__init__(wake, stopped)
        self.path = path
        self.interval = interval
        self.busy = busy
        self.idle = max(idle, interval)

    def start_publisher(self) -> None:
        pass

    def publish(self) -> None:
        pass

    def _listen(self) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            seen = conn.execute("PRAGMA data_version").fetchone()[0]
            self._listening()
            while not self.stopped.wait(self.interval if self.busy() else self.idle):
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != seen:
                    seen = version
                    self.wake()
        finally:
            conn.close()


def choose(
    config: dict,
    database_url: str,
    wake: Callable[[], None],
    stopped: threading.Event,
    busy: Callable[[], bool] = lambda: True,
) -> Backend | None:
    """The cross-process wake-up for this configuration: Redis when REDIS_URL is set,
    else LISTEN/NOTIFY on PostgreSQL, else the SQLite file watch (quick while `busy()`,
    else at the tailer's own pace); None disables it."""
    channel = config["LIVE_CHANNEL"]
    redis_url = config.get("REDIS_URL")
    if redis_url:
        return RedisBackend(wake, stopped, str(redis_url), channel)
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return PostgresBackend(wake, stopped, database_url, channel)
    interval = config["LIVE_SQLITE_WATCH_INTERVAL"] or 0
    if (
        url.get_backend_name() == "sqlite"
        and url.database
        and url.database != ":memory:"
        and interval > 0
    ):
        idle = config.get("LIVE_POLL_INTERVAL") or 1.0
        return SqliteBackend(wake, stopped, url.database, interval, busy, idle)
    return None
