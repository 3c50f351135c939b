"""viberwatch: NXCLOUD Viber webhooks into an order-proof message record, watched live."""

from __future__ import annotations

import os
import sqlite3

from flask import Flask
from flask_migrate import Migrate
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from . import (
    admin,
    alerts,
    analytics,
    auth,
    campaigns,
    config,
    dashboard,
    ingest,
    live,
    observability,
    ops,
    records,
    sending,
    simulate,
    webhooks,
)
from .auth import security
from .core.payloads import parse_zone
from .core.services import KEY, Services
from .records.models import db

MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")
migrate = Migrate()
# Each area's init_app, in this order: authentication's hooks come before all others.
AREAS = (
    auth,
    webhooks,
    records,
    ingest,
    ops,
    sending,
    simulate,
    dashboard,
    analytics,
    campaigns,
    alerts,
    observability,
    live,
    admin,
)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
    """WAL for concurrent readers, real FKs (the busy timeout is SQLITE_BUSY_TIMEOUT, given
    when connecting)."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def _database_url(app: Flask) -> str:
    url = app.config.get("DATABASE_URL")
    if not url:
        return "sqlite:///" + os.path.join(app.instance_path, "viberwatch.db")
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _end_session(_exc) -> None:
    """End the context's session even when its connection died (the database went away
    mid-request): its rollback would fail, and the answer turn into a 500. Runs before
    Flask-SQLAlchemy's own teardown, which then finds nothing left to close."""
    if not db.session.registry.has():
        return
    try:
        db.session.remove()
    except Exception:
        db.session.registry().invalidate()  # drop the connections without a rollback
        db.session.registry.clear()


def _connect_options(app: Flask) -> None:
    """How long connecting and waiting for a lock may take, per database."""
    options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
    connect_args = dict(options.get("connect_args", {}))
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("sqlite"):
        connect_args.setdefault("timeout", app.config["SQLITE_BUSY_TIMEOUT"])
    elif uri.startswith("postgresql"):
        connect_args.setdefault("connect_timeout", app.config["DATABASE_CONNECT_TIMEOUT"])
    options["connect_args"] = connect_args
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: defaults, then instance/config.py, then the environment, then `test_config`
    (app/config.py)."""
    instance = config.process("INSTANCE_PATH")
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
        instance_path=os.path.abspath(instance) if instance else None,
    )
    config.load(app.config, test_config)
    # Secrets, the SQLite database and the spool live here: nobody else may read them.
    security.private_folder(app.instance_path)
    if "SQLALCHEMY_DATABASE_URI" not in (test_config or {}):
        app.config["SQLALCHEMY_DATABASE_URI"] = _database_url(app)
    _connect_options(app)
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        security.private_sqlite(url.database, app.instance_path)
    app.extensions[KEY] = Services(sendtime_zone=parse_zone(app.config["SENDTIME_TZ"]))

    db.init_app(app)
    app.teardown_appcontext(_end_session)
    migrate.init_app(app, db, directory=MIGRATIONS, render_as_batch=True)
    for area in AREAS:
        area.init_app(app)
    return app
