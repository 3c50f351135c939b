"""The campaigns pages at scale, on SQLite and PostgreSQL: a million messages over 200 tags.

A database per kind is seeded with `viberwatch seed --messages N --tags 200` (campaigns each
sent in a window of their own, a steady flow half tagged `otp`, segments as second tags),
then analysed; `--reuse` keeps one seeded by an earlier run with the same N and tags
(migrated to the current schema, and recounted when a migration came since). Then the
production command (`gunicorn -c gunicorn.conf.py 'app:create_app()'`, 2 workers) serves
it, a user signs in through the login form, and each URL gets 3 warm-up requests, then 30
timed sequential ones: p50, p95 and max, beside the target (p95 under 100 ms). A URL that
does not answer 200 is reported as an error row, and the run goes on.

    .venv/bin/python bench/campaigns.py --messages 1000000 [--db sqlite,postgresql] [--reuse] [--write-docs]
    .venv/bin/python bench/campaigns.py --messages 20000 --reuse      # a quick run
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
from report import arguments, measured_in_turn, publish, seeded_at_once
from run import (
    DATA,
    database,
    ensure_user,
    login,
    percentile,
    server,
    sqlalchemy_url,
    viberwatch,
)
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.records.models import Message, MessageTag  # noqa: E402

# What is measured; change these to follow the page.
TAGS = 200  # campaigns seeded (`seed --tags`), besides otp and the segments
WORKERS = 2
WARMUP = 3
REPEAT = 30
TARGET_P95_MS = 100.0
RANGES = ["7d", "30d", "all"]  # the list, unsorted
SORT_COLUMNS = ["messages", "delivery_rate", "p90_delivered"]  # the list, sorted by each
SORT_RANGE = "30d"
# Sorted by a latency, every campaign's latencies are computed (not only a page's): the
# widest such list, all time by p90.
LATENCY_SORT = ("all", "p90_delivered")
SORT_DIR = "desc"
TAG_RANGES = ["30d", "all"]  # a busy tag's page
COMPARE_TAGS_RANGE = "all"  # the busy tag beside the busiest other one, both over this range
COMPARE_RANGES = ("7d", "30d")  # the busy tag over these two ranges


def log(*args) -> None:
    print("[campaigns bench]", *args, file=sys.stderr, flush=True)


def revision(url: str) -> str | None:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def analyze(kind: str, url: str) -> None:
    if kind == "postgresql":
        engine = create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        engine = create_engine(sqlalchemy_url(url))
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    engine.dispose()


def seeded_database(
    kind: str, name: str, seed_args: list[str], *, reuse: bool, stamp: dict | None = None
) -> tuple[str, dict]:
    """The database `name` of `kind` seeded with `viberwatch seed <seed_args>` and analysed,
    and what its marker says (when it was seeded, how long it took, whether it was reused).
    `reuse` keeps one an earlier run seeded with the same `stamp`: migrated to the current
    schema and, when a migration came since, recounted (tables added since, such as rollups,
    are filled from the messages as after any bulk load)."""
    stamp = stamp or {}
    marker = DATA / f"{name}-{kind}.seeded"
    if reuse and marker.exists():
        made = json.loads(marker.read_text())
        if all(made.get(k) == v for k, v in stamp.items()):
            url = database(kind, name, fresh=False)
            viberwatch(url, "db", "upgrade", quiet=True)
            now = revision(url)
            if now != made.get("revision"):
                log(
                    f"{kind}: migrated since the seeding ({made.get('revision')} -> {now}), recounting"
                )
                viberwatch(url, "recount", quiet=True)
                analyze(kind, url)
                made["revision"] = now
                marker.write_text(json.dumps(made))
            return url, {**made, "reused": True}
    marker.unlink(missing_ok=True)
    url = database(kind, name, fresh=True)
    viberwatch(url, "db", "upgrade", quiet=True)
    log(f"{kind}: seed {' '.join(seed_args)}")
    start = time.perf_counter()
    viberwatch(url, "seed", *seed_args, "--random-seed", "1", "--batch", "5000", quiet=True)
    made = {
        "seconds": time.perf_counter() - start,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": revision(url),
        **stamp,
    }
    analyze(kind, url)
    DATA.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(made))
    return url, {**made, "reused": False}


def seeded(kind: str, messages: int, reuse: bool) -> tuple[str, dict]:
    """A database with `messages` messages over TAGS campaigns (see seeded_database)."""
    return seeded_database(
        kind,
        f"bench_campaigns_{messages}_{TAGS}",
        ["--messages", str(messages), "--tags", str(TAGS)],
        reuse=reuse,
    )


def busy_tags(url: str) -> list[tuple[str, int]]:
    """The tag with the most messages of the last 30 days (so that its 7- and 30-day pages
    have something to show; the busiest of all when nothing is that recent), then the
    busiest other tag of all: with their numbers of messages, all time."""
    since = datetime.now(UTC) - timedelta(days=30)
    count = func.count().label("n")
    engine = create_engine(sqlalchemy_url(url))
    with engine.connect() as conn:
        everything = dict(
            conn.execute(select(MessageTag.tag, count).group_by(MessageTag.tag)).all()
        )
        recent = conn.execute(
            select(MessageTag.tag, count)
            .join(Message, Message.request_id == MessageTag.request_id)
            .where(Message.created_at >= since)
            .group_by(MessageTag.tag)
            .order_by(count.desc(), MessageTag.tag)
            .limit(1)
        ).first()
    engine.dispose()
    if not everything:
        return []
    ranked = sorted(everything, key=lambda t: (-everything[t], t))
    busy = recent.tag if recent else ranked[0]
    second = next((t for t in ranked if t != busy), busy)
    return [(busy, everything[busy]), (second, everything[second])]


def targets(tags: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """(what, path) of every URL timed."""
    (busy, n), (second, m) = tags
    out = [(f"list, range={r}", "/campaigns?" + urlencode({"range": r})) for r in RANGES]
    out += [
        (
            f"list, range={SORT_RANGE}, sorted by {column}",
            "/campaigns?" + urlencode({"range": SORT_RANGE, "sort": column, "dir": SORT_DIR}),
        )
        for column in SORT_COLUMNS
    ]
    r, column = LATENCY_SORT
    out.append(
        (
            f"list, range={r}, sorted by {column}",
            "/campaigns?" + urlencode({"range": r, "sort": column, "dir": SORT_DIR}),
        )
    )
    out += [
        (
            f"busy tag ({busy}, {n:,} messages), range={r}",
            "/campaigns/show?" + urlencode({"tag": busy, "range": r}),
        )
        for r in TAG_RANGES
    ]
    out.append(
        (
            f"compare {busy} and {second} ({m:,} messages), both range={COMPARE_TAGS_RANGE}",
            "/campaigns/compare?"
            + urlencode(
                {"a": busy, "b": second, "ra": COMPARE_TAGS_RANGE, "rb": COMPARE_TAGS_RANGE}
            ),
        )
    )
    ra, rb = COMPARE_RANGES
    out.append(
        (
            f"compare {busy} over range={ra} and range={rb}",
            "/campaigns/compare?" + urlencode({"a": busy, "b": busy, "ra": ra, "rb": rb}),
        )
    )
    return out


def timed(
    client: httpx.Client,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    warmup: int = WARMUP,
    repeat: int = REPEAT,
) -> dict:
    """`warmup` requests, then `repeat` timed ones, each with `headers` besides the client's;
    an answer other than 200 (or none) makes the row an error, with what came back."""
    try:
        for _ in range(warmup):
            r = client.get(path, headers=headers)
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}"}
        times, bad = [], {}
        for _ in range(repeat):
            start = time.perf_counter()
            r = client.get(path, headers=headers)
            times.append((time.perf_counter() - start) * 1000)
            if r.status_code != 200:
                bad[r.status_code] = bad.get(r.status_code, 0) + 1
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:120]}
    if bad:
        return {
            "error": ", ".join(f"HTTP {code} x{n}" for code, n in sorted(bad.items()))
            + f" of {repeat}"
        }
    return {
        "p50": statistics.median(times),
        "p95": percentile(times, 95),
        "max": max(times),
        "bytes": len(r.content),
    }


def timed_rows(
    kind: str,
    url: str,
    targets: Callable[[httpx.Client], Iterable[tuple[str, str, dict[str, str] | None]]],
    *,
    workers: int = WORKERS,
    log: Callable[..., None] = log,
) -> list[dict]:
    """The database `url` served by the production command with `workers` workers, a user
    signed in: each (what, path, headers) of `targets(client)` timed, as a row (db, what, path
    and what timed returns), logged as it comes."""
    rows = []
    with server(url, workers=workers) as base:
        client = login(base)
        for what, path, headers in targets(client):
            result = timed(client, path, headers=headers)
            log(f"{kind}: {what}: {result}")
            rows.append({"db": kind, "what": what, "path": path, **result})
        client.close()
    return rows


def measure(kind: str, url: str, made: dict) -> list[dict]:
    ensure_user(url)
    made["load"] = os.getloadavg()[0]
    tags = busy_tags(url)
    if not tags:
        raise RuntimeError(f"{kind}: no message has a tag")
    return timed_rows(kind, url, lambda _: [(what, path, None) for what, path in targets(tags)])


def verdict(row: dict, target: float = TARGET_P95_MS) -> str:
    if "error" in row:
        return "error"
    return "met" if row["p95"] < target else "missed"


def opening(
    messages: int,
    made: dict[str, dict],
    data: str,
    seed: str,
    *,
    workers: int = WORKERS,
    per_url: str = "",
    quick: str = "A quick run",
) -> list[str]:
    """The markdown lines above a timing table: the day, the data (`data`, from `seed <seed>`),
    how each database came to be and the load (from the markers seeded_database returns and
    measure adds to), the server, the requests per URL, the machine; and, below 1,000,000
    messages, that the run was a quick one."""
    day = datetime.now(UTC).date().isoformat()
    seeded = "; ".join(
        f"{kind} {'reused, ' if m['reused'] else ''}seeded {m.get('at', '?')[:10]}"
        + (f" in {m['seconds']:,.0f} s" if m.get("seconds") else "")
        for kind, m in made.items()
    )
    lines = [
        f"Measured {day}: {data} (`seed {seed} --random-seed 1`; {seeded}), the production "
        f"command with {workers} workers, {WARMUP} warm-ups then {REPEAT} sequential requests "
        f"per URL{per_url}; {os.cpu_count()} cores, load average at the start of the timing "
        + ", ".join(f"{m['load']:.1f} ({kind})" for kind, m in made.items())
        + ".",
    ]
    if messages < 1_000_000:
        lines += [
            "",
            f"{quick} at {messages:,} messages, which checks the benchmark; the target is for "
            "the run at 1,000,000.",
        ]
    return lines


def markdown(messages: int, made: dict, rows: list[dict]) -> str:
    lines = opening(
        messages, made, f"{messages:,} messages over {TAGS} campaigns", f"--tags {TAGS}"
    )
    lines += timing_table(rows, "view")
    lines[-1] += " URLs: " + ", ".join(f"`{p}`" for p in dict.fromkeys(r["path"] for r in rows))
    return "\n".join(lines)


def timing_table(rows: list[dict], what: str, target: float = TARGET_P95_MS) -> list[str]:
    """The markdown lines of timed rows (db, what, p50/p95/max or error) beside the p95
    target, and a line counting the rows that met it."""
    lines = [
        "",
        f"| database | {what} | p50 ms | p95 ms | max ms | target p95 < {target:.0f} ms |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['db']} | {r['what']} | – | – | – | error: {r['error']} |")
        else:
            lines.append(
                f"| {r['db']} | {r['what']} | {r['p50']:.1f} | {r['p95']:.1f} | "
                f"{r['max']:.1f} | {verdict(r, target)} |"
            )
    counts = {
        v: sum(1 for r in rows if verdict(r, target) == v) for v in ("met", "missed", "error")
    }
    lines += [
        "",
        f"Target met by {counts['met']} of {len(rows)} rows, missed by {counts['missed']}, "
        f"{counts['error']} errors.",
    ]
    return lines


def main() -> None:
    args = arguments(__doc__).parse_args()
    done = seeded_at_once(args.db.split(","), lambda k: seeded(k, args.messages, args.reuse))
    made, rows = measured_in_turn(done, measure, log)
    publish(
        "campaigns",
        {"made": made, "rows": rows},
        lambda: markdown(args.messages, made, rows),
        data=DATA,
        write_docs=args.write_docs,
    )


if __name__ == "__main__":
    main()
