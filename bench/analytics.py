"""Analytics, alert evaluation and /metrics at scale, on SQLite and PostgreSQL side by side.

Only the derived tables are read by these queries, so the data set is made directly in
them (message, reply, activity, raw_body), with bulk inserts: a month of traffic whose
message columns look as the fold leaves them; then the hourly rollups are rebuilt from it
(`rollup.rebuild`, as `viberwatch recount` does). Each view is timed in process, warm: the
report from the rollups (`--repeat` times), the same report reading every message of the
range (once; what the rollups replace), and the page fragment rendered.

Then what keeping the rollups costs at ingest: receipts through the real ingest into a
fresh SQLite file, in alternating rounds with and without writing the rollups (`rollup.Moves.write`).

    .venv/bin/python bench/analytics.py --messages 1000000 [--db sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / ".data"
PG_SERVER = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from app.records.models import Activity, LatencyDay, Message, OutcomeHour, RawBody, Reply, db  # noqa: E402

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
DAYS = 30
BATCH = 20_000


def log(*args) -> None:
    print("[analytics bench]", *args, file=sys.stderr, flush=True)


def database(kind: str, messages: int, reuse: bool) -> tuple[str, bool]:
    """The database's URL, and whether it already holds the data (with --reuse)."""
    name = f"analytics_{messages}"
    marker = DATA / f"{name}-{kind}.made"
    if reuse and marker.exists():
        url = (
            f"sqlite:///{DATA / (name + '.db')}"
            if kind == "sqlite"
            else f"{PG_SERVER}/viberwatch_{name}"
        )
        return url, True
    marker.unlink(missing_ok=True)
    if kind == "sqlite":
        DATA.mkdir(parents=True, exist_ok=True)
        path = DATA / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return f"sqlite:///{path}", False
    engine = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "viberwatch_{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "viberwatch_{name}"'))
    engine.dispose()
    return f"{PG_SERVER}/viberwatch_{name}", False


def act(
    kind: str, at: datetime, rid: str, phone: str | None = None, status: str | None = None
) -> dict:
    return {"kind": kind, "created_at": at, "request_id": rid, "phone": phone, "status": status}


def rows(messages: int, rnd: random.Random):
    """Message, reply and activity rows for `messages` messages spread over DAYS days."""
    step = timedelta(days=DAYS) / messages
    start = NOW - timedelta(days=DAYS)
    for i in range(messages):
        t0 = start + step * i
        rid = f"r{i:09d}"
        phone = f"79{rnd.randrange(200_000):08d}"
        m = {
            "request_id": rid,
            "phone": phone,
            "registered_at": t0,
            "created_at": t0,
            "status": None,
            "code": None,
            "accepted_at": None,
            "delivered_at": None,
            "seen_at": None,
            "failed_at": None,
            "expired_at": None,
            "cost_currency": None,
            "cost_local_price": None,
            "cost_original_price": None,
            "cost_rate_type": None,
            "anomaly": False,
            "receipts_count": 0,
            "replies_count": 0,
            "last_activity_at": t0,
        }
        activity = [act("register", t0, rid, phone=phone)]
        replies = []
        roll = rnd.random()
        if roll >= 0.02:
            accepted = t0 + timedelta(seconds=rnd.uniform(0.3, 3))
            m.update(
                status="success",
                code=0,
                accepted_at=accepted,
                receipts_count=1,
                cost_currency="USD" if roll < 0.8 else "EUR",
                cost_local_price=0.012,
                cost_original_price=0.002,
                cost_rate_type="Transactional" if rnd.random() < 0.7 else "Promotional",
            )
            last = accepted
            activity.append(act("receipt", accepted, rid, status="success"))
            if roll < 0.08:
                failed = accepted + timedelta(seconds=2)
                m.update(
                    status="failed",
                    code=rnd.choice((9002, 1102, 11000)),
                    failed_at=failed,
                    receipts_count=2,
                )
                activity.append(act("receipt", failed, rid, status="failed"))
                last = failed
            elif roll < 0.12:
                expired = accepted + timedelta(hours=rnd.uniform(1, 6))
                m.update(status="expired", code=11003, expired_at=expired, receipts_count=2)
                activity.append(act("receipt", expired, rid, status="expired"))
                last = expired
            else:
                delivered = accepted + timedelta(seconds=rnd.expovariate(1 / 8))
                m.update(status="delivered", code=11001, delivered_at=delivered, receipts_count=2)
                activity.append(act("receipt", delivered, rid, status="delivered"))
                last = delivered
                if rnd.random() < 0.6:
                    seen = delivered + timedelta(seconds=rnd.expovariate(1 / 600))
                    m.update(status="seen", code=11002, seen_at=seen, receipts_count=3)
                    activity.append(act("receipt", seen, rid, status="seen"))
                    last = seen
                    if rnd.random() < 0.33:
                        at = seen + timedelta(minutes=2)
                        replies.append(
                            {
                                "raw_id": 1,
                                "content_hash": f"h{i}",
                                "phone": phone,
                                "appkey": "APP",
                                "trace_request_id": rid,
                                "text": "ok",
                                "send_time_raw": "",
                                "send_time": at,
                                "received_at": at,
                                "times_received": 1,
                            }
                        )
                        activity.append(act("reply", at, rid, phone=phone))
                        m.update(replies_count=1)
                        last = at
            m["last_activity_at"] = last
        yield m, replies, activity


def fill(url: str, messages: int) -> float:
    engine = create_engine(url)
    start = time.perf_counter()
    db.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(RawBody),
            [
                {
                    "id": 1,
                    "endpoint": "dr",
                    "received_at": NOW,
                    "body": b"{}",
                    "outcome": "accepted",
                    "http_status": 200,
                }
            ],
        )
    batch_m, batch_r, batch_a = [], [], []

    def flush():
        with engine.begin() as conn:
            if batch_m:
                conn.execute(insert(Message), batch_m)
            if batch_r:
                conn.execute(insert(Reply), batch_r)
            if batch_a:
                conn.execute(insert(Activity), batch_a)
        batch_m.clear(), batch_r.clear(), batch_a.clear()

    for m, replies, activity in rows(messages, random.Random(1)):
        batch_m.append(m)
        batch_r.extend(replies)
        batch_a.extend(activity)
        if len(batch_m) >= BATCH:
            flush()
    flush()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if url.startswith("postgresql") else "ANALYZE"))
    engine.dispose()
    return time.perf_counter() - start


def timed(fn, repeat: int) -> dict:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
        db.session.rollback()
    times.sort()
    return {"p50": statistics.median(times), "max": times[-1]}


VIEWS = [
    ("last hour", "range=1h"),
    ("last day", "range=24h"),
    ("last 7 days", "range=7d"),
    ("last 30 days", "range=30d"),
    ("last 7 days, status=failed", "range=7d&status=failed"),
    ("last 7 days, phone prefix", "range=7d&phone=7900"),
    ("last 30 days, code=11003", "range=30d&code=11003"),
    ("last 30 days, one phone", "range=30d&phone=7900012345"),
    ("last 30 days, requestId prefix", "range=30d&q=r00000012"),
]


def measure(kind: str, url: str, repeat: int) -> list[dict]:
    from urllib.parse import parse_qsl

    from flask import render_template
    from werkzeug.datastructures import MultiDict

    from app import create_app
    from app.alerts import notices as alerts
    from app.analytics import report as report_module
    from app.analytics import views as view
    from app.records import rollup

    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": url,
            "SECRET_KEY": "bench",
            "ANALYTICS_CLOCK": lambda: NOW,
            "ALERT_RULES": None,
            "METRICS_TOKEN": "bench",
        }
    )
    out = []
    with app.app_context():
        db.create_all()  # the rollup tables, on data made before they existed
        if any(
            db.session.execute(db.select(model).limit(1)).first() is None
            for model in (OutcomeHour, LatencyDay)
        ):
            start = time.perf_counter()
            written = rollup.rebuild()
            seconds = time.perf_counter() - start
            log(f"rollups rebuilt on {kind}: {written:,} rows in {seconds:.0f} s")
            out.append(
                {
                    "db": kind,
                    "what": f"rollups rebuilt ({written:,} rows)",
                    "report": {"p50": seconds * 1000, "max": seconds * 1000},
                }
            )
        for name, query in VIEWS:
            args = MultiDict(parse_qsl(query))
            flt, rng = view._parse(args)
            report = timed(lambda rng=rng, flt=flt: report_module.report(rng, flt), repeat)
            every = timed(
                lambda rng=rng, flt=flt: report_module.report(rng, flt, use_rollup=False), 1
            )
            with app.test_request_context(f"/analytics?{query}"):
                page = timed(
                    lambda rng=rng, flt=flt: render_template(
                        "analytics/_report.html", **view._context(flt, rng)
                    ),
                    repeat,
                )
            out.append(
                {
                    "db": kind,
                    "what": f"analytics: {name}",
                    "report": report,
                    "every": every,
                    "page": page,
                    "rolled": report_module.rollup_plan(rng, flt) is not None,
                }
            )
        out.append(
            {
                "db": kind,
                "what": "alert rules (3 built-in)",
                "report": timed(lambda: alerts.evaluate(NOW), repeat),
            }
        )
        client = app.test_client()
        out.append(
            {
                "db": kind,
                "what": "GET /metrics",
                "report": timed(
                    lambda: client.get("/metrics", headers={"Authorization": "Bearer bench"}),
                    repeat,
                ),
            }
        )
        db.engine.dispose()
    return out


def ingest_cost(messages: int, rounds: int) -> dict:
    """ms per receipt through the real ingest, with and without keeping the rollups, in
    alternating rounds on fresh SQLite files (the rollups are the only difference)."""
    import json
    import tempfile

    from app import create_app, ingest
    from app.records import rollup

    keep = rollup.Moves.write
    per: dict[str, list[float]] = {"with": [], "without": []}
    for r in range(rounds):
        for mode in ("with", "without") if r % 2 == 0 else ("without", "with"):
            rollup.Moves.write = keep if mode == "with" else (lambda self, conn: None)
            with tempfile.TemporaryDirectory() as tmp:
                app = create_app(
                    {
                        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp}/ingest.db",
                        "SECRET_KEY": "bench",
                        "ALERT_RULES": None,
                    }
                )
                with app.app_context():
                    db.create_all()
                    bodies = [
                        json.dumps(
                            {
                                "status": status,
                                "requestId": f"m{i}",
                                "code": code,
                                "message": "bench",
                                "sendTime": "2026-03-01 20:00:00",
                            }
                        ).encode()
                        for status, code in (("success", 0), ("delivered", 11001), ("seen", 11002))
                        for i in range(messages)
                    ]
                    start = time.perf_counter()
                    for body in bodies:
                        assert ingest.ingest("dr", body, "application/json", {}).ok
                    per[mode].append((time.perf_counter() - start) * 1000 / len(bodies))
                    db.engine.dispose()
    rollup.Moves.write = keep
    return {mode: statistics.median(values) for mode, values in per.items()}


def markdown(messages: int, fills: dict, results: list[dict], cost: dict | None) -> str:
    kinds = list(fills)
    lines = [
        f"### Analytics, alerts and metrics at {messages:,} messages (p50 ms, max in brackets)",
        "",
        "| view | "
        + " | ".join(f"{k} rollups | {k} every message | {k} fragment" for k in kinds)
        + " |",
        "| --- | " + " | ".join("---: | ---: | ---:" for _ in kinds) + " |",
    ]
    by_what: dict[str, dict] = {}
    for r in results:
        by_what.setdefault(r["what"], {})[r["db"]] = r

    def cell(t):
        return f"{t['p50']:.1f} ({t['max']:.1f})" if t else "–"

    for what, per in by_what.items():
        cells = []
        rolled = True
        for k in kinds:
            r = per.get(k, {})
            rolled = r.get("rolled", rolled)
            cells += [cell(r.get("report")), cell(r.get("every")), cell(r.get("page"))]
        name = what if rolled else f"{what} (no rollup: every message)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    made = [f"{k} {s:.0f} s" for k, s in fills.items() if s is not None]
    if made:
        lines += ["", "Data made in " + ", ".join(made) + "."]
    if cost:
        lines += [
            "",
            f"Ingest, ms per receipt (median of rounds): {cost['with']:.2f} keeping the rollups, "
            f"{cost['without']:.2f} without ({100 * (cost['with'] / cost['without'] - 1):+.0f} %).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="keep data made by an earlier run")
    parser.add_argument(
        "--ingest-messages",
        type=int,
        default=300,
        help="messages (3 receipts each) per round of the ingest cost; 0 skips it",
    )
    args = parser.parse_args()
    fills, results = {}, []
    for kind in args.db.split(","):
        url, made = database(kind, args.messages, args.reuse)
        if made:
            fills[kind] = None
        else:
            log(f"making {args.messages:,} messages on {kind}")
            fills[kind] = fill(url, args.messages)
            (DATA / f"analytics_{args.messages}-{kind}.made").write_text(f"{fills[kind]:.0f}")
        log(f"timing on {kind}")
        results += measure(kind, url, args.repeat)
    cost = None
    if args.ingest_messages:
        log("ingest with and without the rollups")
        cost = ingest_cost(args.ingest_messages, rounds=6)
    print(markdown(args.messages, fills, results, cost))


if __name__ == "__main__":
    main()
