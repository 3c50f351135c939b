"""INSERT statements that differ only in spelling between SQLite and PostgreSQL."""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Optional

from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite

from .models import db


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def insert_for(model, dialect: Optional[str] = None):
    """The dialect's INSERT, which knows ON CONFLICT."""
    return (postgresql.insert if (dialect or _dialect()) == "postgresql" else sqlite.insert)(model)


@lru_cache(maxsize=None)
def _adding(dialect: str, model, key: tuple, counts: tuple, extra: tuple, more: Optional[Callable]):
    stmt = insert_for(model, dialect).values({name: bindparam(name) for name in key + counts + extra})
    table = model.__table__.c
    update = {name: table[name] + stmt.excluded[name] for name in counts}
    if more:
        update.update(more(stmt))
    return stmt.on_conflict_do_update(index_elements=list(key), set_=update)


def add_counts(model, key: dict, counts: dict, *, extra: Optional[dict] = None,
               more: Optional[Callable] = None) -> None:
    """Add `counts` to the row of `model` named by `key` (its primary key), creating it.

    A new row also takes `extra`; `more(stmt)` may return further columns to set on
    conflict, from `stmt.excluded`. Runs on the session's connection, in its transaction,
    as one statement built once per shape (this is on every state change of a message).
    """
    extra = extra or {}
    stmt = _adding(_dialect(), model, tuple(key), tuple(counts), tuple(extra), more)
    db.session.connection().execute(stmt, {**key, **counts, **extra})
