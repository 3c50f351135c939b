"""Statements that differ only in spelling between SQLite and PostgreSQL, and a lean way to
run one statement for many rows."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import namedtuple
from collections.abc import Callable
from contextlib import closing, contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache, lru_cache
from operator import itemgetter

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    Numeric,
    bindparam,
    insert,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import NullType

from .models import db


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def insert_for(model, dialect: str | None = None):
    """The dialect's INSERT, which knows ON CONFLICT."""
    return (postgresql.insert if (dialect or _dialect()) == "postgresql" else sqlite.insert)(model)


@cache
def _adding(dialect: str, model, key: tuple, counts: tuple, extra: tuple, more: Callable | None):
    stmt = insert_for(model, dialect).values(
        {name: bindparam(name) for name in key + counts + extra}
    )
    table = model.__table__.c
    update = {name: table[name] + stmt.excluded[name] for name in counts}
    if more:
        update.update(more(stmt))
    return stmt.on_conflict_do_update(index_elements=list(key), set_=update)


def insert_ignore(model, values: dict, conflict: list[str]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when a row was inserted."""
    stmt = insert_for(model).values(**values).on_conflict_do_nothing(index_elements=conflict)
    # Without preserve_rowcount, psycopg's INSERT reports -1 on SQLAlchemy 2.1.
    return db.session.execute(stmt, execution_options={"preserve_rowcount": True}).rowcount == 1


def add_counts(
    conn,
    model,
    key: tuple,
    counts: tuple,
    rows: list[dict],
    *,
    extra: tuple = (),
    more: Callable | None = None,
) -> None:
    """Add each row's `counts` to the row of `model` named by its `key` columns (the primary
    key), creating it; a new row also takes the `extra` columns, and `more(stmt)` may return
    further columns to set on conflict, from `stmt.excluded`. Rows go in the order given:
    callers sort them by key, so that transactions lock rows in one order."""
    if rows:
        run_many(conn, _adding(conn.dialect.name, model, key, counts, extra, more), rows)


@lru_cache(maxsize=8192)
def _sqlite_datetime(value: datetime) -> str:
    # The same instants recur in a batch (a body's received time is in four tables).
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _sqlite_value(value):
    # As the column types store them: UTC datetimes as naive text with microseconds, dates as text.
    if isinstance(value, datetime):
        return _sqlite_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


@lru_cache(maxsize=8192)
def _naive_utc(value: datetime) -> datetime:
    # As _sqlite_datetime: the same instants recur in a batch.
    return value.astimezone(UTC).replace(tzinfo=None)


def _postgresql_value(value):
    if isinstance(value, datetime):
        return _naive_utc(value)
    return value


def cursor(conn):
    """The driver's cursor under a SQLAlchemy connection, in the same transaction.

    The ingest path runs its statements here: SQLAlchemy's per-statement and per-value work
    (result metadata, type processing) costs more than the database's own. Values go in and
    come out as the column types would convert them (`Compiled`, `select_in`).
    """
    return conn.connection.dbapi_connection.cursor()


def bulk_insert(conn, model, rows: list[dict]) -> None:
    """Insert many rows straight through the driver: COPY on PostgreSQL, executemany on
    SQLite, each value as its column type stores it (the ORM's per-value type processing
    costs more than the database's own work here)."""
    if not rows:
        return
    columns = list(rows[0])
    table = model.__tablename__
    dialect = conn.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        conn.execute(insert(model.__table__), rows)
        return
    convert = _postgresql_value if dialect == "postgresql" else _sqlite_value
    values = [[convert(row[c]) for c in columns] for row in rows]
    with closing(cursor(conn)) as cur:
        if dialect == "postgresql":
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
        else:
            placeholders = ", ".join("?" * len(columns))
            cur.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", values
            )


def begin_writing(conn) -> None:
    """On SQLite, take the database's write lock now (BEGIN IMMEDIATE) rather than at the first
    write: what is read next cannot change before the commit. PostgreSQL locks rows instead."""
    raw = conn.connection.dbapi_connection
    if conn.dialect.name == "sqlite" and not raw.in_transaction:
        raw.execute("BEGIN IMMEDIATE")


def _constants(compiled, names: tuple) -> dict:
    """The statement's own values (a literal compared with a column becomes a parameter)."""
    return {name: bind.value for bind, name in compiled.bind_names.items() if name not in names}


def _needs_conversion(kind) -> bool:
    return isinstance(getattr(kind, "impl", kind), (DateTime, Date, NullType))


def _returns(stmt) -> bool:
    """Whether `stmt` asks for RETURNING (PostgreSQL's INSERT also returns a generated key
    unasked, which is not read)."""
    return bool(getattr(stmt, "returning_column_descriptions", None))


def _picker(names: tuple) -> Callable[[dict], tuple]:
    """A row's values of `names`, in that order (itemgetter gives one name's value bare)."""
    if len(names) == 1:
        return lambda row: (row[names[0]],)
    return itemgetter(*names)


def _row_values(rows: list, pick: Callable | None, converting: tuple) -> list:
    """Each row's values: `pick`ed (None: the row is its values already), and at each of
    `converting`'s positions converted by its function unless NULL (as the column's type
    would store or give the value)."""
    if not converting:
        return rows if pick is None else [pick(row) for row in rows]
    out = []
    for row in rows:
        values = list(row if pick is None else pick(row))
        for at, convert in converting:
            value = values[at]
            if value is not None:
                values[at] = convert(value)
        out.append(values)
    return out


def _split_values(sql: str) -> tuple[str, str, str]:
    """An INSERT's SQL cut around its one row of VALUES: (before, the row inside its
    parentheses, after)."""
    head, _, rest = sql.partition(" VALUES (")
    depth, end = 1, 0
    while depth:
        depth += {"(": 1, ")": -1}.get(rest[end], 0)
        end += 1
    return head, rest[: end - 1], rest[end:]


# The rows of an INSERT go to SQLite in statements of this many rows each, while there are as
# many left, the rest one at a time: SQLite does per statement what an FTS5 table behind a
# trigger costs most (it writes its pending terms out when each statement ends), and a
# statement's own overhead. A few fixed sizes keep the statements in the driver's cache.
INSERT_BLOCKS = (64, 8)
# Bound parameters SQLite takes in one statement (its default since 3.32, 999 before).
_SQLITE_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999


class Compiled:
    """A statement compiled once for SQLite, its values converted as the column types would
    store them, only where the type needs it. An INSERT runs in blocks of rows
    (INSERT_BLOCKS), anything else with the driver's executemany; a statement with RETURNING
    runs each row on its own (executemany drops what it returns)."""

    def __init__(self, stmt, dialect, names: tuple):
        compiled = stmt.compile(dialect=dialect, column_keys=list(names))
        self.sql = compiled.string
        self.order = tuple(compiled.positiontup)
        self.constants = _constants(compiled, names)
        self.pick = _picker(self.order)
        self.converting = tuple(
            (at, _sqlite_value)
            for at, name in enumerate(self.order)
            if name in names and _needs_conversion(compiled.binds[name].type)
        )
        self.returning = _returns(stmt)
        self.blocks = []
        if isinstance(stmt, Insert) and " VALUES (" in self.sql:
            head, row, tail = _split_values(self.sql)
            for size in INSERT_BLOCKS:
                if size * len(self.order) <= _SQLITE_VARIABLES:
                    self.blocks.append(
                        (size, f"{head} VALUES {', '.join([f'({row})'] * size)}{tail}")
                    )

    def run(self, cur, rows: list[dict]) -> list:
        if self.constants:
            rows = [{**self.constants, **row} for row in rows]
        values = _row_values(rows, self.pick, self.converting)
        out, done = [], 0
        for size, sql in self.blocks:
            while len(values) - done >= size:
                cur.execute(sql, [v for row in values[done : done + size] for v in row])
                out += cur.fetchall()
                done += size
        if self.returning:
            return out + [r for v in values[done:] for r in cur.execute(self.sql, v).fetchall()]
        if done < len(values):
            cur.executemany(self.sql, values[done:])
        return out


_PARAM = re.compile(r"%\((\w+)\)s")
# From this many rows on, a PostgreSQL statement gets its rows by COPY into a temporary table.
COPY_FROM = 20


def _copy_type(kind) -> str:
    """The PostgreSQL type a binary COPY writes a value of this column type as."""
    impl = getattr(kind, "impl", kind)
    for cls, name in (
        (DateTime, "timestamp"),
        (Date, "date"),
        (Boolean, "bool"),
        (BigInteger, "int8"),
        (Integer, "int4"),
        (Float, "float8"),
        (Numeric, "numeric"),
        (LargeBinary, "bytea"),
    ):
        if isinstance(impl, cls):
            return name
    return "text"


def _copy_value(kind: str):
    """How a value (not NULL) goes into a binary COPY as `kind` (None: as it is)."""
    if kind == "timestamp":
        return _naive_utc
    if kind == "numeric":
        return lambda v: Decimal(repr(v)) if isinstance(v, float) else v
    return None


class CompiledCopy:
    """A statement compiled once for PostgreSQL, run for many rows with binary COPY, the
    fastest way in: a plain INSERT copies straight into its table; any other statement copies
    its rows into a temporary table and runs once over it, in the order given. Fewer than
    COPY_FROM rows go by the driver's execute or executemany instead, quicker for them. What a
    statement with RETURNING returns is read either way."""

    _count = 0

    def __init__(self, stmt, dialect, names: tuple):
        compiled = stmt.compile(dialect=dialect, column_keys=list(names))
        self.sql = compiled.string
        self.constants = _constants(compiled, names)
        self.converters = {
            name: _postgresql_value
            for name in names
            if name in compiled.binds and _needs_conversion(compiled.binds[name].type)
        }
        self.names = tuple(n for n in names if n in compiled.binds)
        self.types = tuple(_copy_type(compiled.binds[n].type) for n in self.names)
        self.pick = _picker(self.names)
        self.converting = tuple(
            (at, convert)
            for at, convert in enumerate(_copy_value(t) for t in self.types)
            if convert is not None
        )
        self.returning = _returns(stmt)
        table = getattr(stmt, "table", None)
        plain_insert = (
            isinstance(stmt, Insert)
            and getattr(stmt, "_post_values_clause", None) is None
            and not stmt._values
            and not self.constants
            and not self.returning
        )
        if plain_insert:
            self.copy = f"COPY {table.name} ({', '.join(self.names)}) FROM STDIN (FORMAT BINARY)"
            self.via_temp = None
            return
        CompiledCopy._count += 1
        temp = f"vw_rows_{CompiledCopy._count}"
        columns = ", ".join(f"{n} {t}" for n, t in zip(self.names, self.types, strict=False))
        self.create = f"CREATE TEMP TABLE IF NOT EXISTS {temp} ({columns}, v_order int4)"
        self.copy = f"COPY {temp} ({', '.join(self.names)}, v_order) FROM STDIN (FORMAT BINARY)"
        plain = stmt.compile(dialect=postgresql.dialect(), column_keys=list(names)).string
        body = _PARAM.sub(
            lambda m: f"v.{m.group(1)}" if m.group(1) in self.names else m.group(0), plain
        )
        # WHERE true: an INSERT's SELECT followed by ON CONFLICT is then not read as a join.
        source = f"(SELECT * FROM {temp} ORDER BY v_order) AS v WHERE true"
        if body.startswith("INSERT"):
            head, row, tail = _split_values(body)
            body = f"{head} SELECT {row} FROM {source}{tail}"
        else:
            head, _, tail = body.partition(" WHERE ")
            body = f"{head} FROM {source} AND {tail}"
        # The temporary rows go in the same statement, so the next use starts empty (the
        # statement's parts share one snapshot: the rows are read before they are deleted).
        self.via_temp = (
            f"WITH applied AS ({body}), emptied AS (DELETE FROM {temp}) SELECT * FROM applied"
            if self.returning
            else f"WITH applied AS ({body} RETURNING 1) DELETE FROM {temp}"
        )

    def run(self, cur, rows: list[dict]) -> list:
        # COPY cannot run inside a pipeline; a pipeline's statements cost no round trip each.
        if len(rows) < COPY_FROM or cur.connection.pgconn.pipeline_status:
            constants, converters = self.constants, self.converters
            params = [
                {**constants, **row, **{n: f(row[n]) for n, f in converters.items()}}
                for row in rows
            ]
            if len(params) == 1:
                cur.execute(self.sql, params[0])
            else:
                cur.executemany(self.sql, params, returning=self.returning)
            return _every_result(cur) if self.returning else []
        if self.via_temp is not None:
            cur.execute(self.create)
        with cur.copy(self.copy) as copy:
            copy.set_types(list(self.types) + ([] if self.via_temp is None else ["int4"]))
            for i, values in enumerate(_row_values(rows, self.pick, self.converting)):
                copy.write_row((*values, i) if self.via_temp is not None else values)
        if self.via_temp is not None:
            # Planned for these rows, as `Sent` plans its reads.
            cur.execute(self.via_temp, self.constants, prepare=False)
        return cur.fetchall() if self.returning else []


def _every_result(cur) -> list:
    """The rows of every result on the cursor (executemany leaves one per row given)."""
    out = []
    while True:
        out += cur.fetchall()
        if not cur.nextset():
            return out


@lru_cache(maxsize=512)
def _compiled(stmt, dialect, names: tuple):
    return (CompiledCopy if dialect.name == "postgresql" else Compiled)(stmt, dialect, names)


def run_many(conn, stmt, rows: list[dict]) -> list:
    """Run `stmt` for every row (all with the same keys), in the order given, through the
    driver; what it returns (a statement with RETURNING), as the driver gives it."""
    if not rows:
        return []
    with closing(cursor(conn)) as cur:
        return _compiled(stmt, conn.dialect, tuple(rows[0])).run(cur, rows)


@contextmanager
def pipelined(conn):
    """On PostgreSQL, the statements run inside go to the server together, in psycopg's
    pipeline mode: one round trip for all of them instead of one each (their errors are raised
    when the block ends). Elsewhere nothing changes."""
    if conn.dialect.name != "postgresql":
        yield
        return
    with conn.connection.dbapi_connection.pipeline():
        yield


class Sent:
    """A query sent through the driver whose rows are read later (`rows`): queries sent one
    after another inside `pipelined` reach PostgreSQL together and cost one round trip."""

    def __init__(self, conn, sql: str | None, params, shape: Callable[[list], list]):
        self._cur, self._shape = None, shape
        if sql is not None:
            self._cur = cursor(conn)
            # On PostgreSQL planned for the ids given each time: a prepared statement's generic
            # plan, chosen while a table was small, would go on scanning it whole as it grows.
            unprepared = {"prepare": False} if conn.dialect.name == "postgresql" else {}
            self._cur.execute(sql, params, **unprepared)

    def rows(self) -> list:
        if self._cur is None:
            return self._shape([])
        with closing(self._cur):
            return self._shape(self._cur.fetchall())


def send_next_ids(conn, table, n: int) -> Sent:
    """`n` new ids for `table`'s integer primary key, in increasing order, to insert explicitly.

    PostgreSQL takes them from the column's sequence. On SQLite they follow the greatest id,
    which is safe only while the transaction holds the write lock (`begin_writing`).
    """
    if n == 0:
        return Sent(conn, None, None, lambda _: [])
    if conn.dialect.name == "postgresql":
        return Sent(
            conn,
            "SELECT nextval(pg_get_serial_sequence(%(table)s, 'id')) FROM generate_series(1, %(n)s)",
            {"table": table.name, "n": n},
            lambda rows: sorted(row[0] for row in rows),
        )
    return Sent(
        conn,
        f"SELECT COALESCE(MAX(id), 0) FROM {table.name}",
        (),
        lambda rows: list(range(rows[0][0] + 1, rows[0][0] + n + 1)),
    )


# How a value (not NULL) read through the driver is given as its column's type gives it; the
# same instants recur in what a batch reads.
@lru_cache(maxsize=8192)
def _from_sqlite_datetime(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


@lru_cache(maxsize=8192)
def _from_naive_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def _to_date(value):
    return date.fromisoformat(value) if isinstance(value, str) else value


@cache
def _reader(dialect: str, table, columns: tuple, key: str, lock: bool):
    """SQL selecting `columns` of the rows whose `key` is in a list given as one parameter,
    the named-tuple type of its rows, and the converter of each column that needs one
    (position, function), as `_row_values` takes them."""
    names = ", ".join(columns)
    if dialect == "postgresql":
        sql = f"SELECT {names} FROM {table.name} WHERE {key} = ANY(%(ids)s)"
        if lock:
            sql += f" ORDER BY {key} FOR UPDATE"
    else:
        sql = f"SELECT {names} FROM {table.name} WHERE {key} IN (SELECT value FROM json_each(?))"
    converting = []
    for at, name in enumerate(columns):
        kind = table.c[name].type
        impl = getattr(kind, "impl", kind)
        if isinstance(impl, DateTime):
            converting.append(
                (at, _from_naive_utc if dialect == "postgresql" else _from_sqlite_datetime)
            )
        elif isinstance(impl, Date):
            converting.append((at, _to_date))
        elif isinstance(impl, Boolean):
            converting.append((at, bool))
        elif isinstance(impl, Numeric) and not getattr(impl, "asdecimal", True):
            converting.append((at, float))
    return sql, namedtuple(f"{table.name}_row", columns), tuple(converting)


def send_select_in(conn, table, columns: tuple, key: str, ids: list, *, lock: bool = False) -> Sent:
    """The rows of `table` whose `key` is one of `ids`, as named tuples of `columns` with values
    as the column types give them (aware UTC datetimes, floats), read through the driver.
    `lock` (PostgreSQL) locks them, in key order."""
    if not ids:
        return Sent(conn, None, None, lambda _: [])
    sql, row, converting = _reader(conn.dialect.name, table, columns, key, lock)
    postgres = conn.dialect.name == "postgresql"
    if _needs_conversion(table.c[key].type):  # keys as the column stores them (times)
        ids = [(_postgresql_value if postgres else _sqlite_value)(v) for v in ids]
    params = {"ids": list(ids)} if postgres else (json.dumps(list(ids)),)
    return Sent(
        conn,
        sql,
        params,
        lambda fetched: [row._make(v) for v in _row_values(fetched, None, converting)],
    )


def select_in(conn, table, columns: tuple, key: str, ids: list, *, lock: bool = False) -> list:
    """`send_select_in`, read at once."""
    return send_select_in(conn, table, columns, key, ids, lock=lock).rows()
