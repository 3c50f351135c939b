"""Webhook signatures are used once: each verified `(accessKey, ts, sign)` is recorded in the
transaction that applies its body, and the same signature again is a replay.

Taken in the ingest writer's batch, so it costs no transaction of its own and commits (or
rolls back) with the body: a body answered 503 leaves its signature free for the sender's
retry. Rows are kept for twice the signature window; past it, `ts` alone refuses a call.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from ..core.signing import Signature
from .models import WebhookSignature, db
from .sqlutil import insert_for

REASON = "already used: a replayed call"


_pruned = {"at": None}
_prune_lock = threading.Lock()


def take(conn, signatures: list[Signature], now: datetime, window_seconds: int) -> list[bool]:
    """Record these signatures as used, in the transaction of `conn`; for each, whether it is
    a replay (used before, or earlier in `signatures` itself)."""
    if not signatures:
        return []
    keep = timedelta(seconds=2 * window_seconds)
    with _prune_lock:
        due = _pruned["at"] is None or now - _pruned["at"] > keep / 2
        if due:
            _pruned["at"] = now
    if due:
        conn.execute(db.delete(WebhookSignature).where(WebhookSignature.seen_at < now - keep))
    first: dict[str, int] = {}
    for i, s in enumerate(signatures):
        first.setdefault(s.sign, i)
    rows = [
        {
            "sign": signatures[i].sign,
            "access_key": signatures[i].access_key,
            "ts": signatures[i].ts,
            "seen_at": now,
        }
        for _, i in sorted(first.items())
    ]
    table = WebhookSignature.__table__
    stmt = insert_for(WebhookSignature, conn.dialect.name).values(rows)
    taken = set(
        conn.execute(
            stmt.on_conflict_do_nothing(index_elements=["sign"]).returning(table.c.sign)
        ).scalars()
    )
    return [first[s.sign] != i or s.sign not in taken for i, s in enumerate(signatures)]
