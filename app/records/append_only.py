"""The audit record is append-only in the database itself: an UPDATE is refused by a trigger,
whoever sends it (a page, a command, a shell on the database). Rows still leave by age, through
`purge`. Made with the table (create_all) and by migration 0010."""

from __future__ import annotations

from sqlalchemy import event

from .models import AuditRecord

TABLE = AuditRecord.__tablename__
TRIGGER = f"{TABLE}_no_update"
FUNCTION = f"{TABLE}_refuse_update"
REFUSAL = "audit records are append-only"


def create(conn) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON {TABLE} "
            f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
        )
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE ON {TABLE} "
            f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
        )


def drop(conn) -> None:
    conn.exec_driver_sql(
        f"DROP TRIGGER IF EXISTS {TRIGGER}"
        + (f" ON {TABLE}" if conn.dialect.name == "postgresql" else "")
    )
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {FUNCTION}()")


event.listen(AuditRecord.__table__, "after_create", lambda target, conn, **kw: create(conn))
event.listen(AuditRecord.__table__, "before_drop", lambda target, conn, **kw: drop(conn))
