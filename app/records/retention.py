"""A bound on the bodies that were never applied (rejected or refused): at most
REJECTED_KEEP_BYTES of them in all, none older than REJECTED_KEEP_DAYS, oldest deleted first.
Accepted bodies are never touched.

Each process adds up the bytes of the never-applied bodies it keeps; once they reach a
sixteenth of the cap (or an hour has passed) it enforces both bounds, so the cap is
overshot by at most that much per process. Bodies deleted for the cap are counted per minute
and the dashboard says how many in the last 24 hours.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Flask, current_app
from sqlalchemy import func

from ..core.services import services
from ..core.times import utcnow
from .models import RawBody, RetentionDrop, db
from .sqlutil import insert_for

log = logging.getLogger(__name__)

NEVER_APPLIED = ("rejected", "refused")
BATCH = 1000
AGE_CHECK_SECONDS = 3600


@dataclass
class Enforced:
    aged: int = 0  # bodies older than REJECTED_KEEP_DAYS
    capped: int = 0  # bodies over REJECTED_KEEP_BYTES
    capped_bytes: int = 0


def _never_applied():
    return RawBody.outcome.in_(NEVER_APPLIED)


def kept_bytes() -> int:
    return int(
        db.session.execute(
            db.select(func.coalesce(func.sum(func.length(RawBody.body)), 0)).where(_never_applied())
        ).scalar_one()
    )


def _delete(ids: list[int]) -> int:
    return db.session.execute(
        db.delete(RawBody).where(RawBody.id.in_(ids), _never_applied()),
        execution_options={"synchronize_session": False},
    ).rowcount


def _note_drop(at: datetime, bodies: int, size: int) -> None:
    minute = at.replace(second=0, microsecond=0)
    stmt = insert_for(RetentionDrop).values(minute=minute, bodies=bodies, bytes=size)
    db.session.execute(
        stmt.on_conflict_do_update(
            index_elements=["minute"],
            set_={
                "bodies": RetentionDrop.bodies + stmt.excluded.bodies,
                "bytes": RetentionDrop.bytes + stmt.excluded.bytes,
            },
        )
    )


def _oldest(after: int) -> list:
    """The oldest never-applied bodies after id `after`: (id, bytes, received_at), by id.

    One query per outcome, each an ordered walk of its (outcome, id) index, merged here:
    a query on both outcomes at once would walk every accepted body in between.
    """
    rows = []
    for outcome in NEVER_APPLIED:
        rows += db.session.execute(
            db.select(RawBody.id, func.length(RawBody.body), RawBody.received_at)
            .where(RawBody.outcome == outcome, RawBody.id > after)
            .order_by(RawBody.id)
            .limit(BATCH)
        ).all()
    return sorted(rows)[:BATCH]


def enforce(now: datetime | None = None) -> Enforced:
    """Delete the never-applied bodies past either bound, oldest first, a batch per transaction."""
    cfg = current_app.config
    now = now or utcnow()
    done = Enforced()
    days = cfg["REJECTED_KEEP_DAYS"] or 0
    cap = cfg["REJECTED_KEEP_BYTES"] or 0
    cutoff = now - timedelta(days=days) if days else None
    excess = kept_bytes() - cap if cap else 0
    after = 0
    while True:
        rows = _oldest(after)
        aged = []
        for row in rows:
            if cutoff is None or row[2] >= cutoff:
                break
            aged.append(row)
        excess -= sum(r[1] or 0 for r in aged)
        capped, size = [], 0
        for raw_id, length, _at in rows[len(aged) :]:
            if size >= excess:
                break
            capped.append(raw_id)
            size += length or 0
        if not aged and not capped:
            break
        done.aged += _delete([r[0] for r in aged]) if aged else 0
        if capped:
            deleted = _delete(capped)
            _note_drop(now, deleted, size)
            done.capped += deleted
            done.capped_bytes += size
            excess -= size
        db.session.commit()
        after = (capped or [r[0] for r in aged])[-1]
    if done.capped:
        log.warning(
            "deleted %d never-applied bodies (%d bytes) to stay under REJECTED_KEEP_BYTES=%d",
            done.capped,
            done.capped_bytes,
            cap,
        )
    return done


class Keeper:
    """This process's share: bytes of never-applied bodies kept since the last enforcement."""

    def __init__(self, app: Flask):
        cap = app.config["REJECTED_KEEP_BYTES"] or 0
        self.check_every = max(1, cap // 16) if cap else None
        self.lock = threading.Lock()
        self.running = threading.Lock()
        self.written = 0
        self.next_age_check = 0.0

    def due(self, size: int) -> bool:
        with self.lock:
            self.written += size
            now = time.monotonic()
            if (
                self.check_every and self.written >= self.check_every
            ) or now >= self.next_age_check:
                self.written = 0
                self.next_age_check = now + AGE_CHECK_SECONDS
                return True
            return False


def kept(size: int) -> None:
    """Called once a never-applied body of `size` bytes is committed; enforces the bounds when
    due. Never raises: the body's own answer is already decided."""
    keeper = services(current_app).retention
    if not keeper.due(size) or not keeper.running.acquire(blocking=False):
        return
    try:
        enforce()
    except Exception:
        db.session.rollback()
        log.exception("enforcing REJECTED_KEEP_BYTES / REJECTED_KEEP_DAYS failed; next time")
    finally:
        keeper.running.release()


def dropped_since(hours: int = 24) -> tuple[int, int]:
    """(bodies, bytes) deleted for the cap in the last `hours`."""
    since = utcnow().replace(second=0, microsecond=0) - timedelta(hours=hours)
    bodies, size = db.session.execute(
        db.select(
            func.coalesce(func.sum(RetentionDrop.bodies), 0),
            func.coalesce(func.sum(RetentionDrop.bytes), 0),
        ).where(RetentionDrop.minute >= since)
    ).one()
    return int(bodies), int(size)


def init_app(app: Flask) -> None:
    services(app).retention = Keeper(app)

    @app.context_processor
    def retention_banner():
        # A callable, so pages that do not show the banners cost no query.
        return {"rejected_dropped": dropped_since}
