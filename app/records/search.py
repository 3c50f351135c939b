"""Text search over the registered texts of messages and the texts of replies.

Each database searches with its own full-text index, kept by the database itself so every
write path (ingest, seed, rebuild, purge, reprocess, a hand-written import) keeps it right:

- SQLite: an FTS5 table per searched table (`message_fts`, `reply_fts`) holding only the
  index (external content: the text stays in `message` / `reply`), kept in step by
  triggers on insert, delete and update of the text. Tokens are runs of letters and digits
  (unicode61, case-folded, diacritics kept).
- PostgreSQL: a GIN index on `to_tsvector('simple', text)` (no stemming and no stop words, so
  numbers, codes and any language are found as written).

A query is a few words: every word must occur (AND), case-insensitively; a word ending in
`*` matches as a beginning (`refu*` finds "refund"). Anything else (quotes, operators,
punctuation) only separates words, so no input reaches the databases' query syntax.
Results are newest first, keyset-paged.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, event, text

from .models import Message, Reply, UTCDateTime, db

MAX_QUERY = 200  # characters
MAX_TERMS = 8
SNIPPET = 160  # characters of text shown around the first match

# The index's objects, made by the DDL below rather than by the models: the model comparison
# of the migrations' schema leaves exactly these out (`owned`).
FTS_TABLES = {"message_fts": ("message", "rowid"), "reply_fts": ("reply", "id")}
FTS5_SHADOWS = ("data", "idx", "content", "docsize", "config")
PG_INDEXES = {"ix_message_text_search": "message", "ix_reply_text_search": "reply"}
TSVECTOR = "to_tsvector('simple'::regconfig, text)"

_WORD = re.compile(r"([^\W_]+)(\*?)")


class QueryError(ValueError):
    """A search that cannot be run, with what to do instead (shown to the operator)."""


@dataclass(frozen=True)
class Term:
    word: str  # lower case, letters and digits only
    prefix: bool


def parse(q: str | None) -> tuple[Term, ...]:
    """The words of a query, or QueryError saying what is wrong with it."""
    if q is None or not q.strip():
        raise QueryError("type a word to search for, e.g. refund")
    if len(q) > MAX_QUERY:
        raise QueryError(f"a search is at most {MAX_QUERY} characters, got {len(q)}")
    if any(unicodedata.category(ch) == "Cc" for ch in q):
        raise QueryError("a search may not contain control characters (tabs, line breaks...)")
    terms: dict[str, Term] = {}
    for match in _WORD.finditer(q):
        word = match.group(1).lower()
        prefix = bool(match.group(2)) or terms.get(word, Term(word, False)).prefix
        terms[word] = Term(word, prefix)
    if not terms:
        raise QueryError(
            "nothing to search for: a search needs letters or digits "
            "(quotes, operators and other punctuation are ignored)"
        )
    if len(terms) > MAX_TERMS:
        raise QueryError(f"a search has at most {MAX_TERMS} words, got {len(terms)}")
    return tuple(terms.values())


def describe(terms: tuple[Term, ...]) -> str:
    return " ".join(t.word + ("*" if t.prefix else "") for t in terms)


def fts5_query(terms: tuple[Term, ...]) -> str:
    """FTS5's MATCH text: each word a quoted string (a prefix one followed by *), ANDed."""
    return " AND ".join(
        '"' + t.word.replace('"', '""') + '"' + ("*" if t.prefix else "") for t in terms
    )


def tsquery(terms: tuple[Term, ...]) -> str:
    """to_tsquery's text: each word a quoted lexeme (`:*` for a prefix), ANDed."""
    return " & ".join(
        "'" + t.word.replace("'", "''") + "'" + (":*" if t.prefix else "") for t in terms
    )


# ---- The index ----------------------------------------------------------------------------


def _sqlite_ddl(fts: str, table: str, key: str) -> list[str]:
    add = f"INSERT INTO {fts}(rowid, text) VALUES (new.{key}, new.text)"
    remove = f"INSERT INTO {fts}({fts}, rowid, text) VALUES ('delete', old.{key}, old.text)"
    return [
        f"CREATE VIRTUAL TABLE {fts} USING fts5(text, content='{table}', "
        f"content_rowid='{key}', tokenize='unicode61 remove_diacritics 0')",
        f"CREATE TRIGGER {fts}_insert AFTER INSERT ON {table} "
        f"WHEN new.text IS NOT NULL BEGIN {add}; END",
        f"CREATE TRIGGER {fts}_delete AFTER DELETE ON {table} "
        f"WHEN old.text IS NOT NULL BEGIN {remove}; END",
        f"CREATE TRIGGER {fts}_update_old AFTER UPDATE OF text ON {table} "
        f"WHEN old.text IS NOT NULL AND old.text IS NOT new.text BEGIN {remove}; END",
        f"CREATE TRIGGER {fts}_update_new AFTER UPDATE OF text ON {table} "
        f"WHEN new.text IS NOT NULL AND old.text IS NOT new.text BEGIN {add}; END",
    ]


def create(conn, table: str, *, fill: bool = False) -> None:
    """Make the search index of `table` (message or reply); `fill` indexes the rows it already
    holds (PostgreSQL's CREATE INDEX always does)."""
    if conn.dialect.name == "sqlite":
        fts = next(f for f, (t, _) in FTS_TABLES.items() if t == table)
        key = FTS_TABLES[fts][1]
        for statement in _sqlite_ddl(fts, table, key):
            conn.exec_driver_sql(statement)
        if fill:
            conn.exec_driver_sql(
                f"INSERT INTO {fts}(rowid, text) SELECT {key}, text FROM {table} "
                "WHERE text IS NOT NULL"
            )
    elif conn.dialect.name == "postgresql":
        name = next(i for i, t in PG_INDEXES.items() if t == table)
        conn.exec_driver_sql(f"CREATE INDEX {name} ON {table} USING gin ({TSVECTOR})")


def drop(conn, table: str) -> None:
    if conn.dialect.name == "sqlite":
        fts = next(f for f, (t, _) in FTS_TABLES.items() if t == table)
        for suffix in ("insert", "delete", "update_old", "update_new"):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {fts}_{suffix}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {fts}")
    elif conn.dialect.name == "postgresql":
        name = next(i for i, t in PG_INDEXES.items() if t == table)
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")


def owned(name: str | None) -> bool:
    """Whether a table or index of that name is the search index's (made here, not by a model)."""
    if not name:
        return False
    if name in FTS_TABLES or name in PG_INDEXES:
        return True
    return any(name == f"{fts}_{shadow}" for fts in FTS_TABLES for shadow in FTS5_SHADOWS)


def _after_create(target, connection, **kw) -> None:
    create(connection, target.name)


def _before_drop(target, connection, **kw) -> None:
    drop(connection, target.name)


for _model in (Message, Reply):
    event.listen(_model.__table__, "after_create", _after_create)
    event.listen(_model.__table__, "before_drop", _before_drop)


# ---- Queries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyHit:
    id: int
    phone: str
    received_at: datetime
    text: str
    trace_request_id: str


@dataclass(frozen=True)
class MessageHit:
    request_id: str
    phone: str | None
    status: str | None
    text: str
    created_at: datetime
    cursor: str


class CursorError(QueryError):
    pass


# PostgreSQL: how many matches make a word common. A common word's newest matches are found
# by walking the newest rows back (a match every few hundred rows at most); a rarer one's by
# the GIN index, then sorting its matches. The planner cannot tell the two apart before it
# runs (a word nobody wrote walked every row back: seconds at a million), so a probe of the
# index counts up to this many matches first and the plan is chosen from that.
COMMON = 5000


def _pg_rows(table: str, q: str, sql: str, params: dict, stmt=None):
    """Run `sql` (a newest-first page of `table`'s rows matching the tsquery `q`) with the
    plan the probe says fits: the GIN index and a sort for a word with fewer than COMMON
    matches, the newest rows walked back otherwise."""
    session = db.session
    session.execute(text("SELECT set_config('enable_seqscan', 'off', true)"))
    found = session.execute(
        text(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} "
            f"WHERE {TSVECTOR} @@ to_tsquery('simple'::regconfig, :q) LIMIT :cap) AS probe"
        ),
        {"q": q, "cap": COMMON},
    ).scalar_one()
    session.execute(text("SELECT set_config('enable_seqscan', 'on', true)"))
    rare = found < COMMON
    if rare:
        session.execute(text("SELECT set_config('enable_indexscan', 'off', true)"))
    try:
        return session.execute(stmt if stmt is not None else _typed(sql), params).all()
    finally:
        if rare:
            session.execute(text("SELECT set_config('enable_indexscan', 'on', true)"))


def _typed(sql: str):
    return text(sql).columns(received_at=UTCDateTime, created_at=UTCDateTime)


def replies(terms: tuple[Term, ...], after: int | None, limit: int) -> list[ReplyHit]:
    """Replies whose text has every term, newest (latest stored) first, ids below `after`."""
    params = {"n": limit, "after": after}
    below = "" if after is None else "AND {key} < :after"
    if db.session.get_bind().dialect.name == "sqlite":
        params["q"] = fts5_query(terms)
        sql = (
            "SELECT r.id, r.phone, r.received_at, r.text, r.trace_request_id FROM "
            "(SELECT rowid AS k FROM reply_fts WHERE reply_fts MATCH :q "
            + below.format(key="rowid")
            + " ORDER BY rowid DESC LIMIT :n) AS f JOIN reply AS r ON r.id = f.k ORDER BY f.k DESC"
        )
    else:
        params["q"] = tsquery(terms)
        sql = (
            "SELECT id, phone, received_at, text, trace_request_id FROM reply "
            f"WHERE {TSVECTOR} @@ to_tsquery('simple'::regconfig, :q) "
            + below.format(key="id")
            + " ORDER BY id DESC LIMIT :n"
        )
        return [ReplyHit(*row) for row in _pg_rows("reply", params["q"], sql, params)]
    return [ReplyHit(*row) for row in db.session.execute(_typed(sql), params)]


def messages(terms: tuple[Term, ...], after: str | None, limit: int) -> list[MessageHit]:
    """Messages whose registered text has every term, newest (first stored) first, after the
    cursor `after` (a MessageHit's)."""
    if db.session.get_bind().dialect.name == "sqlite":
        params = {"n": limit, "q": fts5_query(terms)}
        below = ""
        if after is not None:
            if not after.isdigit() or len(after) > 19:
                raise CursorError("after: not a cursor of this list")
            params["after"] = int(after)
            below = "AND rowid < :after"
        sql = (
            "SELECT m.request_id, m.phone, m.status, m.text, m.created_at, f.k FROM "
            f"(SELECT rowid AS k FROM message_fts WHERE message_fts MATCH :q {below} "
            "ORDER BY rowid DESC LIMIT :n) AS f JOIN message AS m ON m.rowid = f.k "
            "ORDER BY f.k DESC"
        )
        rows = db.session.execute(_typed(sql), params)
        return [MessageHit(*row[:5], cursor=str(row[5])) for row in rows]
    params = {"n": limit, "q": tsquery(terms)}
    below = ""
    if after is not None:
        at, _, rid = after.partition(" ")
        try:
            params["at"] = datetime.fromisoformat(at)
        except ValueError:
            raise CursorError("after: not a cursor of this list") from None
        if params["at"].tzinfo is None or not rid:
            raise CursorError("after: not a cursor of this list")
        params["rid"] = rid
        below = "AND created_at <= :at AND (created_at, request_id) < (:at, :rid)"
    sql = (
        "SELECT request_id, phone, status, text, created_at FROM message "
        f"WHERE {TSVECTOR} @@ to_tsquery('simple'::regconfig, :q) {below} "
        "ORDER BY created_at DESC, request_id DESC LIMIT :n"
    )
    stmt = text(sql).columns(created_at=UTCDateTime)
    if "at" in params:
        stmt = stmt.bindparams(bindparam("at", type_=UTCDateTime))
    return [
        MessageHit(*row, cursor=f"{row[4].isoformat()} {row[0]}")
        for row in _pg_rows("message", params["q"], sql, params, stmt)
    ]


# ---- Snippets -----------------------------------------------------------------------------


def snippet(value: str, terms: tuple[Term, ...], width: int = SNIPPET) -> list[tuple[str, bool]]:
    """`value` cut to about `width` characters around its first match, as (text, matched)
    parts in order: the template marks the matched ones (and escapes every part)."""
    spans = []
    for match in _WORD.finditer(value):
        token = match.group(1).lower()
        if any(token == t.word or (t.prefix and token.startswith(t.word)) for t in terms):
            spans.append(match.span(1))
    start = 0
    if len(value) > width:
        first = spans[0][0] if spans else 0
        start = max(0, min(first - width // 4, len(value) - width))
    end = min(len(value), start + width)
    parts: list[tuple[str, bool]] = []
    if start > 0:
        parts.append(("…", False))
    at = start
    for a, b in spans:
        if b <= start or a >= end:
            continue
        a, b = max(a, start), min(b, end)
        if a > at:
            parts.append((value[at:a], False))
        parts.append((value[a:b], True))
        at = b
    if at < end:
        parts.append((value[at:end], False))
    if end < len(value):
        parts.append(("…", False))
    return parts
