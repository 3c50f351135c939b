"""Data at scale: the `seed`, `purge` and `rebuild` commands, and purging in batches."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, text

from ..core.times import utcnow
from ..records import rollup, tag_rollup, tally
from ..records.models import (
    Activity,
    Contact,
    Message,
    MessageTag,
    MessageTally,
    RawBody,
    Receipt,
    Reply,
    TagDay,
    TagHour,
    TagLatency,
    db,
)

AGE_RE = re.compile(r"\A(\d+)\s*([dhw])\Z")
AGE_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_age(value: str) -> timedelta:
    """'90d', '12h' or '2w'."""
    m = AGE_RE.match(value.strip().lower())
    if not m:
        raise ValueError(f"must look like 90d, 12h or 2w, got {value!r}")
    return timedelta(**{AGE_UNITS[m.group(2)]: int(m.group(1))})


def recount_contacts(phones: set[str]) -> None:
    """Make the thread summaries of these phones agree with the messages and replies left."""
    if not phones:
        return
    phones_list = sorted(phones)
    messages = dict(
        db.session.execute(
            db.select(Message.phone, func.count())
            .where(Message.phone.in_(phones_list))
            .group_by(Message.phone)
        ).all()
    )
    messages_activity = dict(
        db.session.execute(
            db.select(Message.phone, func.max(Message.last_activity_at))
            .where(Message.phone.in_(phones_list))
            .group_by(Message.phone)
        ).all()
    )
    replies = {
        p: (n, last)
        for p, n, last in db.session.execute(
            db.select(Reply.phone, func.count(), func.max(Reply.received_at))
            .where(Reply.phone.in_(phones_list))
            .group_by(Reply.phone)
        ).all()
    }
    gone = [p for p in phones_list if not messages.get(p) and p not in replies]
    if gone:
        db.session.execute(db.delete(Contact).where(Contact.phone.in_(gone)))
    for phone in phones_list:
        if phone in gone:
            continue
        n_replies, last_reply = replies.get(phone, (0, None))
        latest = [t for t in (messages_activity.get(phone), last_reply) if t is not None]
        db.session.execute(
            db.update(Contact)
            .where(Contact.phone == phone)
            .values(
                messages_count=messages.get(phone, 0),
                replies_count=n_replies,
                last_reply_at=last_reply,
                last_activity_at=max(latest),
            )
        )


def purge_batch(request_ids: list[str]) -> dict[str, int]:
    """Delete these messages and everything recorded about them, in the current transaction."""
    raw_ids = list(
        db.session.execute(
            db.select(RawBody.id).where(RawBody.request_id.in_(request_ids))
        ).scalars()
    )
    phones = set(
        db.session.execute(
            db.select(Message.phone).where(
                Message.request_id.in_(request_ids), Message.phone.is_not(None)
            )
        ).scalars()
    )
    phones |= set(
        db.session.execute(
            db.select(Reply.phone).where(Reply.trace_request_id.in_(request_ids))
        ).scalars()
    )
    counts = {}
    # Children first: activity, receipts and replies point at the raw bodies.
    counts["activity"] = (
        db.session.execute(
            db.delete(Activity).where(Activity.raw_id.in_(raw_ids)),
            execution_options={"synchronize_session": False},
        ).rowcount
        if raw_ids
        else 0
    )
    counts["receipt"] = db.session.execute(
        db.delete(Receipt).where(Receipt.request_id.in_(request_ids)),
        execution_options={"synchronize_session": False},
    ).rowcount
    counts["reply"] = db.session.execute(
        db.delete(Reply).where(Reply.trace_request_id.in_(request_ids)),
        execution_options={"synchronize_session": False},
    ).rowcount
    counts["raw_body"] = (
        db.session.execute(
            db.delete(RawBody).where(RawBody.id.in_(raw_ids)),
            execution_options={"synchronize_session": False},
        ).rowcount
        if raw_ids
        else 0
    )
    db.session.execute(
        db.delete(MessageTag).where(MessageTag.request_id.in_(request_ids)),
        execution_options={"synchronize_session": False},
    )
    counts["message"] = db.session.execute(
        db.delete(Message).where(Message.request_id.in_(request_ids)),
        execution_options={"synchronize_session": False},
    ).rowcount
    recount_contacts(phones)
    return counts


def purge(
    older_than: timedelta,
    *,
    batch_size: int = 2000,
    now: datetime | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, int]:
    """Delete messages whose last activity is older than `older_than`, and rejected bodies as old.

    One transaction per batch, so a long purge never holds the database for long and can be
    interrupted and run again.
    """
    cutoff = (now or utcnow()) - older_than
    totals = {"message": 0, "receipt": 0, "reply": 0, "raw_body": 0, "activity": 0}
    while True:
        ids = list(
            db.session.execute(
                db.select(Message.request_id)
                .where(Message.last_activity_at < cutoff)
                .order_by(Message.last_activity_at, Message.request_id)
                .limit(batch_size)
            ).scalars()
        )
        if not ids:
            break
        for name, n in purge_batch(ids).items():
            totals[name] += n
        db.session.commit()
        progress(len(ids))
    # Bodies that never became a message (rejected, refused) age out too.
    while True:
        ids = list(
            db.session.execute(
                db.select(RawBody.id)
                .where(
                    RawBody.received_at < cutoff,
                    RawBody.outcome.in_(("rejected", "refused", "pending")),
                )
                .order_by(RawBody.received_at)
                .limit(batch_size)
            ).scalars()
        )
        if not ids:
            break
        totals["raw_body"] += db.session.execute(
            db.delete(RawBody).where(RawBody.id.in_(ids)),
            execution_options={"synchronize_session": False},
        ).rowcount
        db.session.commit()
    recount()
    return totals


def recount() -> dict[str, int]:
    """The counters' tally and the analytics rollups are derived from the messages; recount
    them after bulk changes. Returns the rows written to each."""
    return {"tally": tally.rebuild(), "rollup": rollup.rebuild(), "tags": tag_rollup.rebuild()}


def refresh_statistics() -> None:
    """ANALYZE every table, so that the query planner knows the data a bulk change left
    (seed, import-sends, rebuild, purge, recount). Without it, PostgreSQL plans the first
    queries after a bulk load on the figures of an empty table."""
    db.session.commit()
    db.session.execute(text("ANALYZE"))
    db.session.commit()


def _counted() -> dict[str, dict]:
    """What the tally and the rollups count now (rows that count nothing left out)."""
    out = {
        "message_tally": {
            (r.day, r.status, r.code, r.anomaly): r.n
            for r in db.session.execute(db.select(MessageTally)).scalars()
            if r.n
        }
    }
    for model, names, _period in rollup.OUTCOME_TABLES:
        out[model.__tablename__] = {
            tuple(getattr(r, c) for c in names): _outcome_values(lambda c, r=r: getattr(r, c))
            for r in db.session.execute(db.select(model)).scalars()
            if r.n
        }
    for model, names, _period in rollup.LATENCY_TABLES:
        out[model.__tablename__] = {
            tuple(getattr(r, c) for c in names): (r.n, r.low, r.high)
            for r in db.session.execute(db.select(model)).scalars()
            if r.n
        }
    for model, key, values in _tag_tables():
        out[model.__tablename__] = {
            tuple(getattr(r, c) for c in key): _tag_values(values, lambda c, r=r: getattr(r, c))
            for r in db.session.execute(db.select(model)).scalars()
            if r.n
        }
    return out


def _tag_tables() -> list[tuple]:
    return [
        (TagDay, tag_rollup.DAY_KEY, tag_rollup.DAY_SUMS),
        (TagHour, tag_rollup.HOUR_KEY, tag_rollup.HOUR_SUMS),
        (TagLatency, tag_rollup.LATENCY_KEY, ("n", "low", "high")),
    ]


def _outcome_values(get) -> tuple:
    return tuple(round(float(get(c)), 6) for c in rollup.OUTCOME_SUMS)


def _tag_values(names: tuple, get) -> tuple:
    return tuple(round(float(get(c)), 6) for c in names)


def _recounted() -> dict[str, dict]:
    """What a recount would write, computed without writing."""
    out = {"message_tally": {k: n for k, n in tally.recounted().items() if n}}
    outcomes = {model: names for model, names, _ in rollup.OUTCOME_TABLES}
    for model, rows in rollup.recounted():
        if model in outcomes:
            out[model.__tablename__] = {
                tuple(r[c] for c in outcomes[model]): _outcome_values(r.get) for r in rows if r["n"]
            }
        else:
            names = next(n for m, n, _ in rollup.LATENCY_TABLES if m is model)
            out[model.__tablename__] = {
                tuple(r[c] for c in names): (r["n"], r["low"], r["high"]) for r in rows if r["n"]
            }
    tables = {model: (key, values) for model, key, values in _tag_tables()}
    for model, rows in tag_rollup.recounted():
        key, values = tables[model]
        out[model.__tablename__] = {
            tuple(r[c] for c in key): _tag_values(values, r.get) for r in rows if r["n"]
        }
    return out


# Tables of latency bins, whose bounds a value taken away does not narrow.
BOUNDED_BINS = {model.__tablename__ for model, _, _ in rollup.LATENCY_TABLES} | {"tag_latency"}


def recount_differences(limit: int = 10) -> list[str]:
    """Where the tally and the rollups kept at ingest differ from a recount of the messages
    (nothing is written). A latency bin's bounds may be wider than a recount's (a value taken
    away does not narrow them), never narrower."""
    recounted, kept = _recounted(), _counted()
    db.session.rollback()
    found = []
    for table, rows in recounted.items():
        stored = kept[table]
        for key in sorted(set(rows) | set(stored), key=repr):
            have, want = stored.get(key), rows.get(key)
            if table in BOUNDED_BINS and have and want:
                same = have[0] == want[0] and have[1] <= want[1] and have[2] >= want[2]
            else:
                same = have == want
            if not same:
                found.append(f"{table} {key}: kept {have}, recounted {want}")
    return found[:limit] + ([f"... {len(found) - limit} more"] if len(found) > limit else [])


def count_older(older_than: timedelta, now: datetime | None = None) -> int:
    cutoff = (now or utcnow()) - older_than
    return db.session.execute(
        db.select(func.count()).select_from(Message).where(Message.last_activity_at < cutoff)
    ).scalar()
