"""What an ingest batch learns of the messages it touches: which ones it creates (their rows
written whole, in requestId order), and of the others, in one round trip on PostgreSQL, their
rows (locked in requestId order), their receipts and replies as the fold sees them; and the raw
body ids the batch will use."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import NamedTuple

from ..core.status import ReceiptFact
from ..records import rollup, tag_rollup
from ..records.derivation import Registration, ReplyFact, coerced_of, tags_of
from ..records.models import Message, RawBody, Receipt, Reply
from ..records.sqlutil import (
    insert_for,
    pipelined,
    run_many,
    select_in,
    send_next_ids,
    send_select_in,
)

# What a batch needs of a stored message: its registration, its counters, and what the
# tally and the rollups count it under (tally.key_of, rollup.share_of, tag_rollup.share_of),
# so a rollup that reads one more column reads it here too.
MESSAGE_COLUMNS = tuple(
    dict.fromkeys(
        (
            "request_id",
            "phone",
            "registered_at",
            "text",
            "appkey",
            "function_type",
            "rate_type",
            "tags",
            "last_activity_at",
            "receipts_count",
            "status",
            "code",
            "anomaly",
            *rollup.COLUMNS,
            *tag_rollup.COLUMNS,
        )
    )
)
RECEIPT_COLUMNS = (
    "request_id",
    "content_hash",
    "status",
    "code",
    "message",
    "received_at",
    "send_time_raw",
    "has_cost",
    "cost_currency",
    "cost_local_price",
    "cost_original_price",
    "cost_rate_type",
    "coerced",
)
STORED_RAW_COLUMNS = (
    "id",
    "endpoint",
    "received_at",
    "body",
    "outcome",
    "http_status",
    "request_id",
)
REPLY_COLUMNS = (
    "trace_request_id",
    "content_hash",
    "phone",
    "received_at",
    "raw_id",
    "text",
    "file_name",
    "media",
    "coerced",
)


class Stored(NamedTuple):
    """What `read_messages` found: the messages it created, and of the others (request_id ->)
    the locked row, its receipts and its replies (-> content_hash -> fact); the raw ids."""

    created: set[str]
    rows: dict
    receipts: dict
    replies: dict
    raw_ids: list[int]


@cache
def _create_statement(dialect: str):
    return (
        insert_for(Message, dialect)
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(Message.request_id)
    )


def read_messages(
    conn, ids: list[str], new_rows: Callable[[list[str]], list[dict]], new_raw: int
) -> Stored:
    """Create the messages of `ids` (in requestId order) not yet stored, each with its whole row
    (`new_rows` gives them, in the order of the ids given, as they would be were they new);
    lock the others and read their rows, receipts and replies (on PostgreSQL in one round
    trip); take `new_raw` raw body ids.

    A message created here has no receipts or replies stored and its row is the one given, so
    nothing of it is read back, and it is written once. Which ids are stored is looked up first
    (without a lock), so that only rows that may be new are made; one created meanwhile by
    another transaction is found by the insert, and locked and read with the others.

    Creating and locking go in requestId order, so two transactions never wait on each other
    in a cycle: a transaction that finds a key another one created waits for it in the first
    step, before it has locked anything further. (The ids found stored are left out of that
    step: an insert of a committed key finds it without waiting.) The receipts and replies are
    read after the lock is held. (SQLite has one writer at a time.)

    The raw ids are taken once the locks are held, so of two transactions that touch one
    message the one applied first numbers its bodies first: the bodies of a message in raw id
    order (as `rebuild` reads them) are the bodies in the order they were applied, and the
    first arrival of a receipt is the one that stored it.
    """
    known = {
        row.request_id
        for row in select_in(conn, Message.__table__, ("request_id",), "request_id", ids)
    }
    maybe_new = [rid for rid in ids if rid not in known]
    created = set()
    if maybe_new:
        created = {
            row[0]
            for row in run_many(conn, _create_statement(conn.dialect.name), new_rows(maybe_new))
        }
    stored = [rid for rid in ids if rid not in created]
    with pipelined(conn):
        rows = send_select_in(
            conn, Message.__table__, MESSAGE_COLUMNS, "request_id", stored, lock=True
        )
        receipts = send_select_in(conn, Receipt.__table__, RECEIPT_COLUMNS, "request_id", stored)
        replies = send_select_in(conn, Reply.__table__, REPLY_COLUMNS, "trace_request_id", stored)
        raw_ids = send_next_ids(conn, RawBody.__table__, new_raw)
    return Stored(
        created,
        {row.request_id: row for row in rows.rows()},
        receipt_facts(receipts.rows()),
        reply_facts(replies.rows()),
        raw_ids.rows(),
    )


def receipt_facts(rows) -> dict[str, dict[str, ReceiptFact]]:
    """request_id -> content_hash -> the fold's view of each stored receipt."""
    out: dict[str, dict[str, ReceiptFact]] = {}
    for r in rows:
        cost = (
            (r.cost_currency, r.cost_local_price, r.cost_original_price, r.cost_rate_type)
            if r.has_cost
            else None
        )
        out.setdefault(r.request_id, {})[r.content_hash] = ReceiptFact(
            status=r.status,
            code=r.code,
            message=r.message,
            received_at=r.received_at,
            key=r.content_hash,
            send_time_raw=r.send_time_raw,
            cost=cost,
            coerced=coerced_of(r.coerced),
        )
    return out


def reply_facts(rows) -> dict[str, dict[str, ReplyFact]]:
    """request_id -> content_hash -> each stored reply to it."""
    out: dict[str, dict[str, ReplyFact]] = {}
    for r in rows:
        out.setdefault(r.trace_request_id, {})[r.content_hash] = ReplyFact(
            r.phone, r.received_at, r.raw_id, r.text, r.file_name, r.media, coerced_of(r.coerced)
        )
    return out


def registration_of(row) -> Registration | None:
    if row.registered_at is None:
        return None
    return Registration(
        row.phone,
        row.text,
        row.appkey,
        row.function_type,
        row.registered_at,
        row.rate_type,
        tags_of(row.tags),
    )
