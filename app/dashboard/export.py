"""CSV export of what the messages page shows: the database formats every cell, the app
streams what it gets (PostgreSQL writes the CSV itself through COPY)."""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context
from sqlalchemy import Integer, Select, String, and_, case, func, literal_column, or_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from ..auth import audit
from ..core.times import utcnow
from ..errors import error_response
from ..records.models import Message, Reply, db
from .filters import FilterError, MessageFilter

log = logging.getLogger(__name__)
bp = Blueprint("export", __name__)

# Rows fetched and written per chunk sent: memory stays flat whatever the export's size, and
# the per-chunk cost of the streaming machinery does not dominate.
CHUNK = 200

# A formula trigger (OWASP's list): = + - @ or any character Unicode compatibility-normalises
# to one of them (full-width ＝＋－＠ and their small, superscript and subscript forms), a tab
# or a carriage return.
FORMULA_TRIGGERS = (
    "=",
    "+",
    "-",
    "@",
    "\t",
    "\r",
    "\u207a",
    "\u207c",
    "\u208a",
    "\u208c",
    "\ufb29",
    "\ufe62",
    "\ufe63",
    "\ufe66",
    "\ufe6b",
    "\uff0b",
    "\uff0d",
    "\uff1d",
    "\uff20",
)
# What may stand before a formula trigger and still leave it the first thing a spreadsheet, or
# whatever cleans the cell on the way, sees: every format character (Cf: zero-width, direction
# marks and isolates, soft hyphen, tags), space or separator (Zs, Zl, Zp) and control character
# (Cc) but tab and carriage return, which are triggers themselves; and the other assigned
# code points Unicode makes default-ignorable (Default_Ignorable_Code_Point less Cf and the
# unassigned: the combining grapheme joiner, Hangul and Khmer fillers, variation selectors),
# listed here as ranges because unicodedata does not carry that property.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zs", "Zl", "Zp", "Cc"})
_OTHER_IGNORABLE = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
)


# Unicode puts those categories in planes 0, 1 and 14 only (the others hold ideographs and
# private use; the tests scan them all): a sixth of the code points, 20 ms at import, not 100.
_PLANES_SCANNED = (range(0x20000), range(0xE0000, 0xF0000))


def _blanks() -> str:
    category = unicodedata.category
    chars = {
        chr(i)
        for plane in _PLANES_SCANNED
        for i in plane
        if category(chr(i)) in _INVISIBLE_CATEGORIES
    }
    chars.update(chr(i) for low, high in _OTHER_IGNORABLE for i in range(low, high + 1))
    return "".join(sorted(chars - set(FORMULA_TRIGGERS)))


BLANKS = _blanks()


def _sql_string(value: str):
    """A constant of ours written into the SQL: the planner sees a constant, not a parameter."""
    return literal_column("'" + value.replace("'", "''") + "'", String)


def _sql_set(values):
    """Constants for `IN` as one SQL fragment: hundreds of them in every text cell compile
    at once, where as many elements would each take their turn."""
    return literal_column("(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")")


# SQL text cannot hold U+0000, and neither can PostgreSQL's text. SQLite stores it, but its text
# functions end a string at the first one: there a cell starting with U+0000 has "" for its
# first character, which is therefore suspect too.
_SQL_BLANKS = BLANKS.replace("\x00", "")
# Trimmed first, the blanks most text carries: white space, the zero-width spaces, joiners and
# direction marks of General Punctuation, and the byte order mark. A trim compares each leading
# character with every one of its set: ~50 cost about what the check did before, all ~500 ten
# times as much on SQLite, so they are tried only when a rarer blank comes first.
_COMMON_BLANKS = "".join(
    c for c in _SQL_BLANKS if c.isspace() or "\u2000" <= c <= "\u206f" or c == "\ufeff"
)
_ONE = literal_column("1", Integer)
_EMPTY = _sql_string("")
_TRIGGERS = _sql_set(FORMULA_TRIGGERS)
_SUSPECT = _sql_set((*FORMULA_TRIGGERS, *_SQL_BLANKS, ""))
# What is first after the blanks, with a "." appended: a trigger, or "" where U+0000 follows the
# blanks (SQLite only; what comes after it cannot be read there, so it counts as a formula). An
# empty cell gives ".".
_SEEN_FORMULA = _sql_set((*FORMULA_TRIGGERS, ""))
_SEEN_FORMULA_OR_RARE = _sql_set(
    (*FORMULA_TRIGGERS, "", *(c for c in _SQL_BLANKS if c not in _COMMON_BLANKS))
)


def _first_after(column, blanks: str):
    return func.substr(func.ltrim(column, _sql_string(blanks)) + _sql_string("."), _ONE, _ONE)


def _in(value, values):
    return value.op("IN", is_comparison=True)(values)


def text_cell(column):
    """The column as a spreadsheet shows it as text: a value whose first character after any
    BLANKS is a formula trigger gets a leading ', and an empty value is written as nothing (as
    NULL is). The same SQL on SQLite and PostgreSQL."""
    first = func.substr(column, _ONE, _ONE)
    # Most cells start with neither a trigger nor a blank: one look at the first character
    # settles them (each database makes an index or a hash of the set once per query). A cell
    # that starts with a blank is trimmed of the common ones; only when a trigger or a rarer
    # blank is then first is it trimmed of them all. Neither database computes an expression
    # once for two uses, hence one test per trim.
    formula = and_(
        _in(first, _SUSPECT),
        or_(
            _in(first, _TRIGGERS),
            and_(
                _in(_first_after(column, _COMMON_BLANKS), _SEEN_FORMULA_OR_RARE),
                _in(_first_after(column, _SQL_BLANKS), _SEEN_FORMULA),
            ),
        ),
    )
    return case((formula, _sql_string("'") + column), else_=func.nullif(column, _EMPTY))


class iso_cell(FunctionElement):
    """A stored UTC time as ISO 8601 text ending in Z, microseconds only when there are any:
    what Python's isoformat() writes for the same value."""

    type = String()
    name = "iso_cell"
    inherit_cache = True


@compiles(iso_cell, "sqlite")
def _iso_cell_sqlite(element, compiler, **kw):
    # Stored as "YYYY-MM-DD HH:MM:SS.ffffff"; strftime knows only milliseconds.
    column = compiler.process(element.clauses, **kw)
    return f"replace(replace({column}, ' ', 'T') || 'Z', '.000000Z', 'Z')"


@compiles(iso_cell, "postgresql")
def _iso_cell_postgresql(element, compiler, **kw):
    column = compiler.process(element.clauses, **kw)
    return f"""replace(to_char({column}, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '.000000Z', 'Z')"""


class price_cell(FunctionElement):
    """A price as Python writes a float: the shortest text that reads back as the same double,
    with ".0" on a whole number. Text on PostgreSQL; on SQLite a float, which the csv writer
    writes that way (untyped, so nothing converts it on the way)."""

    name = "price_cell"
    inherit_cache = True


@compiles(price_cell, "sqlite")
def _price_cell_sqlite(element, compiler, **kw):
    # A whole price is stored as an INTEGER (NUMERIC affinity): read it as the float it is, and
    # the csv writer formats it.
    return f"CAST({compiler.process(element.clauses, **kw)} AS REAL)"


@compiles(price_cell, "postgresql")
def _price_cell_postgresql(element, compiler, **kw):
    # float8 text is the shortest round-trip form (extra_float_digits >= 1, set for the export);
    # prices stay under 10^12, so a whole one never turns into an exponent. A price of at most
    # 15 significant digits (under 10^9, 6 decimals) is a whole float exactly when it is a whole
    # number: one conversion to float8 (the costly part) settles it; longer ones ask the float.
    price = compiler.process(element.clauses, **kw)
    value = f"CAST({price} AS DOUBLE PRECISION)"
    return (
        f"CASE WHEN {price} = trunc({price}) THEN CAST({value} AS TEXT) || '.0' "
        f"WHEN abs({price}) < 1000000000 THEN CAST({value} AS TEXT) "
        f"ELSE CAST({value} AS TEXT) || CASE WHEN {value} = trunc({value}) THEN '.0' ELSE '' END END"
    )


MESSAGE_CELLS = (
    ("request_id", text_cell(Message.request_id)),
    ("phone", text_cell(Message.phone)),
    # NULL status: registered, no receipt yet.
    ("status", func.coalesce(Message.status, _sql_string("pending"))),
    ("code", Message.code),
    ("code_message", text_cell(Message.code_message)),
    ("send_time", iso_cell(Message.send_time)),
    ("accepted_at", iso_cell(Message.accepted_at)),
    ("delivered_at", iso_cell(Message.delivered_at)),
    ("seen_at", iso_cell(Message.seen_at)),
    ("expired_at", iso_cell(Message.expired_at)),
    ("failed_at", iso_cell(Message.failed_at)),
    ("cost_currency", text_cell(Message.cost_currency)),
    ("local_price", price_cell(Message.cost_local_price)),
    ("original_price", price_cell(Message.cost_original_price)),
    ("rate_type", text_cell(Message.cost_rate_type)),
    ("anomalies", text_cell(Message.anomalies)),
    ("replies", Message.replies_count),
    ("last_reply_text", text_cell(Message.last_reply_text)),
    ("last_activity_at", iso_cell(Message.last_activity_at)),
    ("appkey", text_cell(Message.appkey)),
    ("tags", text_cell(Message.tags)),
)
REPLY_CELLS = (
    ("phone", text_cell(Reply.phone)),
    ("trace_request_id", text_cell(Reply.trace_request_id)),
    ("text", text_cell(Reply.text)),
    ("media", text_cell(Reply.media)),
    ("file_name", text_cell(Reply.file_name)),
    ("send_time", iso_cell(Reply.send_time)),
    ("received_at", iso_cell(Reply.received_at)),
)
MESSAGE_COLUMNS = tuple(name for name, _ in MESSAGE_CELLS)
REPLY_COLUMNS = tuple(name for name, _ in REPLY_CELLS)


def message_query(flt: MessageFilter) -> Select:
    """The filtered messages, one formatted cell per column, in the page's order."""
    return flt.query().with_only_columns(*(cell for _, cell in MESSAGE_CELLS))


def reply_query(flt: MessageFilter) -> Select:
    """Replies to the messages the filter selects (all replies without a filter), newest first."""
    stmt = db.select(*(cell for _, cell in REPLY_CELLS))
    if not flt.is_empty:
        stmt = stmt.where(
            Reply.trace_request_id.in_(db.select(Message.request_id).where(*flt.conditions()))
        )
    return stmt.order_by(Reply.received_at.desc(), Reply.id.desc())


def _header(columns: tuple[str, ...]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(columns)
    # A BOM so spreadsheet programs read the file as UTF-8.
    return ("\ufeff" + buffer.getvalue()).encode()


def _driver_statement(stmt: Select) -> tuple[str, Any]:
    """The SQL and the parameters the driver would be given for `stmt`, each value processed
    by its type as SQLAlchemy does when it executes (an aware time becomes naive UTC)."""
    dialect = db.session.get_bind().dialect
    compiled = stmt.compile(dialect=dialect)
    state = compiled.construct_expanded_state()
    params = {}
    for name, value in state.parameters.items():
        process = state.processors.get(name)
        if process is None and name in compiled.binds:
            process = compiled.binds[name].type.bind_processor(dialect)
        params[name] = process(value) if process else value
    if compiled.positional:
        return state.statement, tuple(params[name] for name in state.positiontup)
    return state.statement, params


def _driver_cursor():
    """A cursor of the driver on the session's connection, in its transaction: rows of plain
    tuples, with none of SQLAlchemy's per-row work."""
    return db.session.connection().connection.driver_connection.cursor()


class Rows:
    """How many rows an export has written so far."""

    n = 0


def _written_by_csv(stmt: Select, count: Rows) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    cursor = _driver_cursor()
    try:
        cursor.execute(*_driver_statement(stmt))
        while rows := cursor.fetchmany(CHUNK):
            count.n += len(rows)
            writer.writerows(rows)
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    finally:
        cursor.close()


# COPY takes no server-side parameters, so the driver writes each value into the SQL; a
# negative number before a cast ("-2147483648::INTEGER") would be read as minus the cast of
# 2147483648, out of range. Each value goes in parentheses.
_PLACEHOLDER = re.compile(r"(?<!%)%\(\w+\)s|(?<!%)%s")


def _copied_by_postgresql(stmt: Select, count: Rows) -> Iterator[bytes]:
    sql, params = _driver_statement(stmt)
    sql = _PLACEHOLDER.sub(lambda m: f"({m.group(0)})", sql)
    with _driver_cursor() as cursor:
        # For this transaction only: the shortest round-trip text of a float, UTF-8 whatever
        # the connection's default, and no JIT, whose compiling delayed the first row by up to
        # a second and saved nothing measurable over a million rows.
        cursor.execute(
            "SELECT set_config('extra_float_digits', '1', true), "
            "set_config('client_encoding', 'UTF8', true), set_config('jit', 'off', true)"
        )
        # COPY ends each row with a bare LF; every read is one whole row, so its last byte is
        # that LF (a line break inside a quoted cell is never last).
        with cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", params) as copy:
            rows: list = []
            while row := copy.read():
                rows.append(row[:-1])
                if len(rows) == CHUNK:
                    count.n += len(rows)
                    yield b"\r\n".join(rows) + b"\r\n"
                    rows = []
            if rows:
                count.n += len(rows)
                yield b"\r\n".join(rows) + b"\r\n"


def csv_chunks(
    columns: tuple[str, ...], stmt: Select, count: Rows | None = None
) -> Iterator[bytes]:
    """BOM and header at once, before the query runs, then CHUNK rows at a time (counted in
    `count`)."""
    count = count if count is not None else Rows()
    yield _header(columns)
    if db.session.get_bind().dialect.name == "postgresql":
        yield from _copied_by_postgresql(stmt, count)
    else:
        yield from _written_by_csv(stmt, count)


def audited(chunks: Iterator[bytes], count: Rows, target: str, details: dict) -> Iterator[bytes]:
    """The chunks of an export, then its audit record with the rows it wrote, whether the
    download ran to its end or was cut off."""
    complete = False
    try:
        yield from chunks
        complete = True
    finally:
        chunks.close()
        try:
            audit.record_apart("export", target, {**details, "rows": count.n, "complete": complete})
        except SQLAlchemyError:
            # The file has gone out; the database that would record it is away. Said in the
            # log, with what the record would have held.
            log.exception(
                "the audit record of an export (%s, %d rows) was not written", target, count.n
            )


@bp.get("/export.csv")
def export_csv():
    """The filtered messages (or, with kind=replies, their replies) as a streamed CSV file."""
    kind = request.args.get("kind", "messages")
    if kind not in ("messages", "replies"):
        return error_response(400, "kind", "must be messages or replies")
    try:
        flt = MessageFilter.from_args(request.args)
    except FilterError as exc:
        return jsonify(exc.as_json()), 400
    count = Rows()
    if kind == "replies":
        chunks = csv_chunks(REPLY_COLUMNS, reply_query(flt), count)
    else:
        chunks = csv_chunks(MESSAGE_COLUMNS, message_query(flt), count)
    name = f"viberwatch-{kind}-{utcnow().date().isoformat()}.csv"
    filters = {k: v for k, v in flt.to_args().items() if v not in (None, "", [], ())}
    return Response(
        stream_with_context(audited(chunks, count, kind, {"filter": filters})),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
        },
    )
