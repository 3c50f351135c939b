"""Text search at scale, on SQLite (FTS5) and PostgreSQL (GIN on a tsvector): a million
messages and 200,000 replies.

A database per kind is seeded with `viberwatch seed --messages N --replies N/5
--random-seed 1` (registered texts and replies carry words worth searching: `refund` on
about 15 % of texts and 10 % of replies, `voucher` on about 1 %, each text's own 4-digit
number), then analysed; `--reuse` keeps one seeded by an earlier run with the same figures
and seeded texts (migrated to the current schema). Then the production command
(`gunicorn -c gunicorn.conf.py 'app:create_app()'`, 2 workers) serves it, a user signs in
through the login form, and each URL gets 3 warm-up requests, then 30 timed sequential ones:
p50, p95 and max, beside the target (p95 under 100 ms). A URL that does not answer 200 is
reported as an error row, and the run goes on.

    .venv/bin/python bench/search.py --messages 1000000 [--db sqlite,postgresql] [--reuse] [--write-docs]
    .venv/bin/python bench/search.py --messages 20000 --reuse      # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

from campaigns import seeded_database, timed, timing_table
from report import write_between
from run import DATA, ensure_user, login, server, sqlalchemy_url
from sqlalchemy import create_engine, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.records.models import Message  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- search:start -->", "<!-- search:end -->"

WORKERS = 2
TARGET_P95_MS = 100.0
TEXTS = 2  # the seeded texts' version (app/ops/seed.py): a database of other texts is reseeded
QUERIES = [
    ("a common word", "refund"),
    ("a word of 1 % of texts", "voucher"),
    ("a prefix", "vouch*"),
    ("two words", "parcel delivery"),
    ("a word nobody wrote", "zyzzyva"),
]


def log(*args) -> None:
    print("[search bench]", *args, file=sys.stderr, flush=True)


def seeded(kind: str, messages: int, replies: int, reuse: bool) -> tuple[str, dict]:
    """A database with `messages` messages and `replies` replies, seeded with the texts
    TEXTS names (see campaigns.seeded_database)."""
    return seeded_database(
        kind,
        f"bench_search_{messages}_{replies}",
        ["--messages", str(messages), "--replies", str(replies)],
        reuse=reuse,
        stamp={"texts": TEXTS},
    )


def rare_number(url: str) -> str:
    """The 4-digit number of the newest registered text: a word of about 1 in 9,000 texts."""
    engine = create_engine(sqlalchemy_url(url))
    with engine.connect() as conn:
        text = conn.execute(
            select(Message.text)
            .where(Message.text.is_not(None))
            .order_by(Message.created_at.desc())
            .limit(1)
        ).scalar()
    engine.dispose()
    return next(w.strip("#$:.,") for w in (text or "0000").split() if w.strip("#$:.,").isdigit())


def targets(client, url: str) -> list[tuple[str, str]]:
    queries = [*QUERIES, ("a rare number", rare_number(url))]
    out = [(f"{what}: {q}", "/search?" + urlencode({"q": q})) for what, q in queries]
    # The second page of each kind, from the cursors the first page hands out.
    first = client.get("/search?q=refund", headers={"Accept": "application/json"}).json()
    for kind in ("Messages", "Replies"):
        if first.get(f"next{kind}"):
            out.append((f"refund, older {kind.lower()} (second page)", first[f"next{kind}"]))
    out.append(("refund, as JSON", "/search?q=refund&format=json"))
    return out


def measure(kind: str, url: str, made: dict) -> list[dict]:
    ensure_user(url)
    made["load"] = os.getloadavg()[0]
    rows = []
    with server(url, workers=WORKERS) as base:
        client = login(base)
        for what, path in targets(client, url):
            if path.endswith("&format=json"):
                path = path.removesuffix("&format=json")
                client.headers["Accept"] = "application/json"
                result = timed(client, path)
                client.headers["Accept"] = "text/html"
            else:
                result = timed(client, path)
            log(f"{kind}: {what}: {result}")
            rows.append({"db": kind, "what": what, "path": path, **result})
        client.close()
    return rows


def markdown(messages: int, replies: int, made: dict, rows: list[dict]) -> str:
    from campaigns import REPEAT, WARMUP

    day = datetime.now(UTC).date().isoformat()
    seeded_ = "; ".join(
        f"{kind} {'reused, ' if m['reused'] else ''}seeded {m.get('at', '?')[:10]}"
        + (f" in {m['seconds']:,.0f} s" if m.get("seconds") else "")
        for kind, m in made.items()
    )
    lines = [
        f"Measured {day}: {messages:,} messages and {replies:,} replies (`seed --messages "
        f"{messages} --replies {replies} --random-seed 1`; {seeded_}), the production command "
        f"with {WORKERS} workers, {WARMUP} warm-ups then {REPEAT} sequential requests per URL "
        f"(each page lists the newest 20 replies and 20 messages that match); "
        f"{os.cpu_count()} cores, load average at the start of the timing "
        + ", ".join(f"{m['load']:.1f} ({kind})" for kind, m in made.items())
        + ".",
    ]
    if messages < 1_000_000:
        lines += [
            "",
            f"**A quick run** at {messages:,} messages, which checks the benchmark; the target "
            "is for the run at 1,000,000.",
        ]
    lines += timing_table(rows, "query", TARGET_P95_MS)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--replies", type=int, help="default: a fifth of --messages")
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument(
        "--reuse", action="store_true", help="keep a database seeded by an earlier run"
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    replies = args.messages // 5 if args.replies is None else args.replies
    kinds = args.db.split(",")
    with ThreadPoolExecutor(len(kinds)) as pool:
        done = dict(
            zip(
                kinds,
                pool.map(lambda k: seeded(k, args.messages, replies, args.reuse), kinds),
                strict=True,
            )
        )
    rows, made = [], {}
    for kind, (url, marker) in done.items():
        made[kind] = marker
        log(f"timing on {kind}")
        rows += measure(kind, url, marker)
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "search.json").write_text(json.dumps({"made": made, "rows": rows}, indent=2))
    out = markdown(args.messages, replies, made, rows)
    print(out)
    if args.write_docs:
        write_between(DOCS, START, END, out)


if __name__ == "__main__":
    main()
