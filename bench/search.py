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

import os
import re
import sys
from pathlib import Path
from urllib.parse import urlencode

from campaigns import opening, seeded_database, timed_rows, timing_table
from report import arguments, measured_in_turn, publish, seeded_at_once
from run import DATA, ensure_user, sqlalchemy_url
from sqlalchemy import create_engine, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.records.models import Message  # noqa: E402

WORKERS = 2
TARGET_P95_MS = 100.0
TEXTS = 2  # the seeded texts' version (app/ops/seed.py): a database of other texts is reseeded
JSON = {"Accept": "application/json"}
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
    # "$8674.00" holds 8674: the first run of exactly four digits.
    return next((run for run in re.findall(r"\d+", text or "") if len(run) == 4), "0000")


def targets(client, url: str) -> list[tuple[str, str, dict[str, str] | None]]:
    """(what, path, headers) of every URL timed."""
    queries = [*QUERIES, ("a rare number", rare_number(url))]
    out = [(f"{what}: {q}", "/search?" + urlencode({"q": q}), None) for what, q in queries]
    # The second page of each kind, from the cursors the first page hands out.
    first = client.get("/search?q=refund", headers=JSON).json()
    for kind in ("Messages", "Replies"):
        if first.get(f"next{kind}"):
            out.append((f"refund, older {kind.lower()} (second page)", first[f"next{kind}"], None))
    out.append(("refund, as JSON", "/search?q=refund", JSON))
    return out


def measure(kind: str, url: str, made: dict) -> list[dict]:
    ensure_user(url)
    made["load"] = os.getloadavg()[0]
    return timed_rows(kind, url, lambda client: targets(client, url), workers=WORKERS, log=log)


def markdown(messages: int, replies: int, made: dict, rows: list[dict]) -> str:
    lines = opening(
        messages,
        made,
        f"{messages:,} messages and {replies:,} replies",
        f"--messages {messages} --replies {replies}",
        workers=WORKERS,
        per_url=" (each page lists the newest 20 replies and 20 messages that match)",
        quick="**A quick run**",
    )
    lines += timing_table(rows, "query", TARGET_P95_MS)
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--replies", type=int, help="default: a fifth of --messages")
    args = parser.parse_args()
    replies = args.messages // 5 if args.replies is None else args.replies
    done = seeded_at_once(
        args.db.split(","), lambda k: seeded(k, args.messages, replies, args.reuse)
    )
    made, rows = measured_in_turn(done, measure, log)
    publish(
        "search",
        {"made": made, "rows": rows},
        lambda: markdown(args.messages, replies, made, rows),
        data=DATA,
        write_docs=args.write_docs,
    )


if __name__ == "__main__":
    main()
