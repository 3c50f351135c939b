"""Reprocessing: a rejected or refused body run through the ingest path again, as if it
arrived when it did (a refused one through today's authentication first, never around it)."""

from __future__ import annotations

import json

from ..ingest.jobs import Job, Result, unavailable
from ..ingest.transaction import apply_batch
from ..records.models import RawBody, db
from .checks import still_refused


def reprocess(raw_id: int) -> Result:
    """Run a rejected or refused body through validation again, as if it arrived when it did."""
    raw = db.session.execute(db.select(RawBody.__table__).where(RawBody.id == raw_id)).one()
    if raw.outcome not in ("rejected", "refused"):
        return Result(raw.http_status, raw.outcome, raw.id, raw.request_id)
    if raw.outcome == "refused":
        # Authentication again, never around it.
        refused = still_refused(db.session.get(RawBody, raw.id))
        if refused is not None:
            return refused
    job = Job(
        raw.endpoint,
        raw.body,
        raw.content_type,
        json.loads(raw.headers or "{}"),
        raw.remote_addr,
        raw.received_at,
        raw_id=raw.id,
    )
    if not apply_batch([job]):
        return unavailable("not applied: the database is away", raw.id)
    return job.result


def rejected_ids(include_refused: bool = False) -> list[int]:
    outcomes = ["rejected", "refused"] if include_refused else ["rejected"]
    return list(
        db.session.execute(
            db.select(RawBody.id).where(RawBody.outcome.in_(outcomes)).order_by(RawBody.id)
        ).scalars()
    )
