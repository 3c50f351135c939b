"""Where an ingest transaction's time goes, in process: `ingest.apply_batch` on a fresh
database (SQLite file or PostgreSQL), receipts for new messages in the benchmark's mix,
with each phase's CPU time (time.process_time) summed per body. Used by bench/run.py;
alone: python bench/ingest_phases.py [DATABASE_URL].

Phases are timed by wrapping the functions that do them; the wrapping costs a little
itself, so the total is also measured without it, in another round.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app, ingest  # noqa: E402
from app.ingest import batch as ingest_batch  # noqa: E402
from app.ingest import transaction  # noqa: E402
from app.records import contacts, rollup, tally  # noqa: E402
from app.records.models import db  # noqa: E402

PHASES = (
    ("validate and hash the bodies", transaction, "parse"),
    ("create, lock and read the messages (receipts, replies)", ingest_batch, "read_messages"),
    ("decide each body", ingest_batch.IngestBatch, "_decide"),
    ("insert raw bodies", ingest_batch.IngestBatch, "_write_raw"),
    ("insert receipts and replies", ingest_batch.IngestBatch, "_write_records"),
    ("derive the messages (fold, columns)", ingest_batch, "message_columns"),
    ("counters' and rollups' keys", rollup, "share_of"),
    ("update the messages", ingest_batch.IngestBatch, "_write_messages"),
    ("insert activity rows", ingest_batch.IngestBatch, "_write_activity"),
    ("contacts", contacts, "write"),
    ("tally", tally.Moves, "write"),
    ("rollups", rollup.Moves, "write"),
    ("take the write lock", transaction, "begin_writing"),
)


def bodies(tag: str, messages: int) -> list[tuple[str, bytes]]:
    """The webhook mix of bench/ingest.lua, for `messages` new messages, in arrival order
    across 32 connections (so a batch holds different messages' receipts)."""
    out = []
    for n in range(messages):
        rid = f"p{tag}{n:020d}"
        for status, code, text in (
            ("success", 0, "Successfully sent."),
            ("delivered", 11001, "Viber message has delivered"),
            ("seen", 11002, "Viber message has seen"),
        ):
            data = {
                "status": status,
                "requestId": rid,
                "code": code,
                "message": text,
                "sendTime": "2024-05-01 10:00:00",
            }
            if status == "success":
                data["cost"] = {
                    "currency": "USD",
                    "localPrice": 0.012,
                    "originalPrice": 0.012,
                    "rateType": "Transactional",
                }
            out.append((n % 32, len(out), "dr", json.dumps(data).encode()))
        if n % 7 == 0:
            out.append(
                (
                    n % 32,
                    len(out),
                    "message",
                    json.dumps(
                        {
                            "phone": f"79{n:09d}",
                            "appkey": "BENCH01",
                            "traceRequestId": rid,
                            "message": {"text": "Thanks!"},
                            "sendTime": "2024-05-01 10:05:00",
                        }
                    ).encode(),
                )
            )
    # Connection by connection in turn: each connection's requests stay in order.
    out.sort(key=lambda item: (item[1] // 32 // 4, item[0], item[1]))
    return [(endpoint, body) for _, _, endpoint, body in out]


def run(url: str | None, batch: int, messages: int, timed: bool) -> tuple[float, Counter]:
    """CPU seconds per body, and per phase when `timed`."""
    spent: Counter = Counter()
    originals = []
    if timed:
        for name, owner, attr in PHASES:
            fn = getattr(owner, attr)
            originals.append((owner, attr, fn))

            def wrapped(*args, _fn=fn, _name=name, **kwargs):
                start = time.process_time()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    spent[_name] += time.process_time() - start

            setattr(owner, attr, wrapped)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            app = create_app(
                {
                    "SQLALCHEMY_DATABASE_URI": url or f"sqlite:///{tmp}/phases.db",
                    "SECRET_KEY": "bench",
                    "ALERT_RULES": None,
                }
            )
            with app.app_context():
                db.drop_all()
                db.create_all()
                work = bodies("w", 100)
                for i in range(0, len(work), batch):
                    ingest.apply_batch(
                        [
                            ingest.Job(e, b, "application/json", {}, "127.0.0.1")
                            for e, b in work[i : i + batch]
                        ]
                    )
                spent.clear()
                work = bodies("m", messages)
                jobs = [ingest.Job(e, b, "application/json", {}, "127.0.0.1") for e, b in work]
                start = time.process_time()
                for i in range(0, len(jobs), batch):
                    ingest.apply_batch(jobs[i : i + batch])
                total = time.process_time() - start
                assert all(j.result.ok for j in jobs)
                db.session.remove()
                db.drop_all()
                db.engine.dispose()
    finally:
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)
    return total / len(jobs), Counter({k: v / len(jobs) for k, v in spent.items()})


def measure(
    url: str | None, batches=(1, 32, 128), messages: int = 1500, rounds: int = 3
) -> list[dict]:
    out = []
    for batch in batches:
        totals = [run(url, batch, messages, timed=False)[0] for _ in range(rounds)]
        phases = [run(url, batch, messages, timed=True)[1] for _ in range(rounds)]
        names = [name for name, _, _ in PHASES]
        median = {name: statistics.median(p.get(name, 0.0) for p in phases) for name in names}
        # _write_messages includes deriving and the keys: report its own part apart.
        median["update the messages"] -= (
            median["derive the messages (fold, columns)"] + median["counters' and rollups' keys"]
        )
        out.append(
            {
                "batch": batch,
                "us_per_body": statistics.median(totals) * 1e6,
                "phases_us": {k: v * 1e6 for k, v in median.items()},
            }
        )
    return out


def markdown(results: dict[str, list[dict]]) -> list[str]:
    kinds = list(results)
    cols = [(kind, r["batch"]) for kind in kinds for r in results[kind]]
    lines = [
        "| µs of CPU per body | " + " | ".join(f"{k}, batch {b}" for k, b in cols) + " |",
        "| --- |" + " ---: |" * len(cols),
    ]
    by = {(kind, r["batch"]): r for kind in kinds for r in results[kind]}
    lines.append(
        "| **total (unwrapped)** | "
        + " | ".join(f"**{by[c]['us_per_body']:.0f}**" for c in cols)
        + " |"
    )
    for name, _, _ in PHASES:
        lines.append(
            f"| {name} | " + " | ".join(f"{by[c]['phases_us'][name]:.0f}" for c in cols) + " |"
        )
    rest = [by[c]["us_per_body"] - sum(by[c]["phases_us"].values()) for c in cols]
    lines.append(
        "| the rest: commit, statements' setup, answers | "
        # Below zero: the phases' sum, timed in other rounds with the wrapping's own cost,
        # came out above the total; the rest is then within that noise.
        + " | ".join(f"{r:.0f}" if r >= 0.5 else "~0" for r in rest)
        + " |"
    )
    return lines


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else None
    print("\n".join(markdown({"sqlite" if url is None else "postgresql": measure(url)})))
