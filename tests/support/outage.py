"""Makes the app's database go away and come back, without stopping the server other tests
use: a cut TCP proxy in front of PostgreSQL, a write lock held past a short busy timeout on
SQLite."""

from __future__ import annotations

import sqlite3

from sqlalchemy.engine import make_url

from .tcp_proxy import Proxy


class Outage:
    """Makes the app's database go away and come back: a cut proxy in front of PostgreSQL, a
    write lock held past the (short) busy timeout on SQLite."""

    def __init__(self, database_url: str):
        self.url = make_url(database_url)
        self.proxy = None
        self.lock = None
        if self.url.get_backend_name() == "postgresql":
            self.proxy = Proxy(self.url.host or "127.0.0.1", self.url.port or 5432).start()
            self.app_url = self.url.set(host="127.0.0.1", port=self.proxy.port).render_as_string(
                hide_password=False
            )
        else:
            self.app_url = database_url

    @property
    def config(self) -> dict:
        return {
            "SQLALCHEMY_DATABASE_URI": self.app_url,
            "SQLITE_BUSY_TIMEOUT": 0.3,
            "DATABASE_CONNECT_TIMEOUT": 2,
            "SPOOL_RETRY_SECONDS": 0.2,
        }

    @property
    def env(self) -> dict:
        return {
            "DATABASE_URL": self.app_url,
            "VIBERWATCH_SQLITE_BUSY_TIMEOUT": "0.3",
            "VIBERWATCH_DATABASE_CONNECT_TIMEOUT": "2",
            "VIBERWATCH_SPOOL_RETRY_SECONDS": "0.2",
        }

    def begin(self) -> None:
        if self.proxy is not None:
            self.proxy.cut()
        else:
            self.lock = sqlite3.connect(self.url.database, isolation_level=None)
            self.lock.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        if self.proxy is not None:
            self.proxy.restore()
        elif self.lock is not None:
            self.lock.execute("COMMIT")
            self.lock.close()
            self.lock = None

    def close(self) -> None:
        if self.lock is not None:
            self.end()
        if self.proxy is not None:
            self.proxy.stop()
