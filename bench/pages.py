"""Every page and htmx fragment at a million messages, on SQLite and PostgreSQL, before and
after, side by side in one run: p95 under 20 ms (analytics over 30 and 90 days: 50 ms).

A database per kind is seeded with `viberwatch seed --messages N --replies N/5 --random-seed
1` and analysed (the database bench/search.py uses; `--reuse` keeps one an earlier run
seeded). "Before" is the tree of `--before` (`git archive`, extracted into a temporary
folder), "after" the working tree; both serve the same database with the production command
(`gunicorn -c gunicorn.conf.py 'app:create_app()'`, 2 workers each), both up at once, each
signed in through its login form. Every URL gets 3 warm-up requests then 20 timed sequential
ones on each side, before then after for one URL and after then before for the next, so that
load from elsewhere falls on both. Without `--before`, only the working tree is timed.

The URLs: the messages page with every filter it offers, broad (a 1- and a 2-digit phone
prefix, a status that most messages have, the last 30 days, anomalies) and narrow (an exact
phone, a code, a requestId prefix) and combinations, each as the whole page and as the
fragment the filter form swaps (`HX-Request`, `HX-Target: results`); analytics over a day, 7,
30 and 90 days; conversations, a thread, a message; search; campaigns; alerts; the rejected
bodies; the admin pages and My account.

`--no-statistics` (PostgreSQL) times the working tree once more after deleting the planner's
statistics of every table (as right after a bulk load that did not end with ANALYZE), then
analyses again.

    .venv/bin/python bench/pages.py --messages 1000000 [--before REV] [--db sqlite,postgresql]
                                    [--reuse] [--no-statistics] [--write-docs]
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from access_cost import serve, trees
from campaigns import analyze, timed
from report import arguments, publish, seeded_at_once
from run import DATA, ensure_user, login, samples, sqlalchemy_url
from search import seeded
from sqlalchemy import create_engine, text

WORKERS = 2
WARMUP = 3
REPEAT = 20
TARGET_MS = 20.0
ANALYTICS_TARGET_MS = 50.0  # analytics over 30 and 90 days
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
FRAGMENT = {"HX-Request": "true", "HX-Target": "results"}


def log(*args) -> None:
    print("[pages bench]", *args, file=sys.stderr, flush=True)


def message_filters(s: dict) -> list[tuple[str, str]]:
    """(what, query) of the messages page's filters, broad then narrow then combined."""
    today = date.fromisoformat(s["day"])
    month = f"from={(today - timedelta(days=29)).isoformat()}&to={today.isoformat()}"
    return [
        ("no filter", ""),
        ("phone prefix of 1 digit", "phone=7"),
        ("phone prefix of 2 digits", "phone=79"),
        ("status=delivered", "status=delivered"),
        ("status=seen", "status=seen"),
        ("status=pending", "status=pending"),
        ("status=delivered,seen", "status=delivered&status=seen"),
        ("last 30 days", month),
        ("anomalies", "anomaly=1"),
        ("status=failed", "status=failed"),
        ("code=11003", "code=11003"),
        ("phone (exact)", f"phone={s['phone']}"),
        ("phone prefix of 6 digits", f"phone={s['phone'][:6]}"),
        ("requestId prefix", f"q={s['rid'][:5]}"),
        ("seen, last 30 days", f"status=seen&{month}"),
        ("failed, phone prefix 79", "status=failed&phone=79"),
        ("phone prefix 79, last 30 days", f"phone=79&{month}"),
    ]


def targets(s: dict) -> list[dict]:
    today = date.fromisoformat(s["day"])
    out = []
    for what, query in message_filters(s):
        path = "/?" + query if query else "/"
        out.append({"group": "messages", "what": what, "path": path})
        out.append({"group": "messages", "what": f"{what} (fragment)", "path": path, "hx": True})
    ninety = urlencode({"range": "custom", "start": f"{today - timedelta(days=90)}T00:00"})
    for what, path, target in (
        ("last day", "/analytics", TARGET_MS),
        ("7 days", "/analytics?range=7d", TARGET_MS),
        ("30 days", "/analytics?range=30d", ANALYTICS_TARGET_MS),
        ("90 days", "/analytics?" + ninety, ANALYTICS_TARGET_MS),
        ("30 days, status=failed", "/analytics?range=30d&status=failed", ANALYTICS_TARGET_MS),
        # Loaded after the page (no rollup answers it); the tree before had it in the page.
        (
            "30 days: phones that replied most",
            "/analytics/top-phones?range=30d",
            ANALYTICS_TARGET_MS,
        ),
        (
            "90 days: phones that replied most",
            "/analytics/top-phones?" + ninety,
            ANALYTICS_TARGET_MS,
        ),
    ):
        out.append({"group": "analytics", "what": what, "path": path, "target": target})
    for what, path in (
        ("conversations", "/conversations"),
        ("a thread", f"/conversations/{s['phone']}"),
        ("a message", f"/messages/{s['rid']}"),
        ("search: refund", "/search?q=refund"),
        ("campaigns", "/campaigns"),
        ("alerts", "/alerts"),
        ("rejected bodies", "/rejected"),
        ("users", "/admin/users"),
        ("audit log", "/admin/audit"),
        ("my account", "/account"),
    ):
        out.append({"group": "other pages", "what": what, "path": path})
    return out


def forget_statistics(url: str) -> None:
    engine = create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            text(
                "DELETE FROM pg_statistic WHERE starelid IN (SELECT relid FROM "
                "pg_stat_user_tables WHERE schemaname = 'public')"
            )
        )
        conn.execute(
            text(
                "UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE relnamespace = "
                "'public'::regnamespace AND relkind IN ('r', 'i')"
            )
        )
    engine.dispose()


def measure(kind: str, url: str, sides: dict, only: str | None = None) -> list[dict]:
    """Each target on each side, alternating which side goes first."""
    ensure_user(url)
    s = samples(url)
    plan = [t for t in targets(s) if not only or only in f"{t['group']}: {t['what']}"]
    rows = [{**t, "db": kind} for t in plan]
    with ExitStack() as stack:
        clients = {}
        for side, tree in sides.items():
            base = stack.enter_context(serve(tree, url, kind, WORKERS))
            clients[side] = login(base)
            stack.callback(clients[side].close)
        for i, row in enumerate(rows):
            order = list(clients) if i % 2 == 0 else list(reversed(clients))
            headers = FRAGMENT if row.get("hx") else None
            for side in order:
                row[side] = timed(
                    clients[side], row["path"], headers=headers, warmup=WARMUP, repeat=REPEAT
                )
            log(kind, row["what"], {k: row[k] for k in clients})
    return rows


def cell(result: dict | None) -> str:
    if not result:
        return "–"
    if "error" in result:
        return result["error"]
    return f"{result['p95']:.1f} ({result['p50']:.1f})"


def verdict(row: dict, side: str = "after") -> str:
    result = row.get(side) or {}
    if "p95" not in result:
        return "error"
    return "met" if result["p95"] < row.get("target", TARGET_MS) else "**missed**"


def markdown(messages: int, made: dict, runs: dict, sides: dict) -> str:
    day = datetime.now(UTC).date().isoformat()
    columns = [side for side in ("before", "after") if side in sides]
    lines = [
        f"Measured {day}: {messages:,} messages and {messages // 5:,} replies (`seed --messages "
        f"{messages} --random-seed 1`, then `ANALYZE`), the production command with {WORKERS} "
        f"workers per side, signed in, {WARMUP} warm-ups then {REPEAT} sequential requests per "
        f"URL and side, the sides alternating; {os.cpu_count()} cores, load average at the "
        "start " + ", ".join(f"{m['load']:.1f} ({NAMES.get(k, k)})" for k, m in made.items()) + ".",
        "",
        "Sides: "
        + "; ".join(f"{side}: {sides[side].label}" for side in columns)
        + ". Figures are p95 ms (p50 in brackets).",
    ]
    for kind, rows in runs.items():
        lines += [
            "",
            f"#### {NAMES.get(kind.split(':')[0], kind)}"
            + (", planner statistics deleted" if ":" in kind else ""),
            "",
            "| page | URL | " + " | ".join(columns) + " | target p95 | after |",
            "| --- | --- | " + " | ".join("---:" for _ in columns) + " | ---: | --- |",
        ]
        for row in rows:
            url = row["path"] + (" (fragment)" if row.get("hx") else "")
            lines.append(
                f"| {row['group']}: {row['what']} | `{url}` | "
                + " | ".join(cell(row.get(side)) for side in columns)
                + f" | {row.get('target', TARGET_MS):.0f} | {verdict(row)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--before", help="a commit to time beside the working tree")
    parser.add_argument("--no-statistics", action="store_true")
    parser.add_argument("--only", help="time only the targets whose name contains this")
    args = parser.parse_args()
    replies = args.messages // 5
    done = seeded_at_once(
        args.db.split(","), lambda k: seeded(k, args.messages, replies, args.reuse)
    )
    runs, made = {}, {}
    with tempfile.TemporaryDirectory(prefix="pages-bench-") as tmp:
        both = trees(args.before or "HEAD", Path(tmp))
        sides = both if args.before else {"after": both["after"]}
        for kind, (url, marker) in done.items():
            made[kind] = {**marker, "load": os.getloadavg()[0]}
            log(f"timing on {kind}")
            runs[kind] = measure(kind, url, sides, args.only)
            if args.no_statistics and kind == "postgresql":
                forget_statistics(url)
                try:
                    runs[f"{kind}:no statistics"] = measure(
                        kind, url, {"after": both["after"]}, args.only
                    )
                finally:
                    analyze(kind, url)
    publish(
        "pages",
        {"made": made, "runs": runs},
        lambda: markdown(args.messages, made, runs, sides),
        data=DATA,
        write_docs=args.write_docs,
    )


if __name__ == "__main__":
    main()
