"""The benchmarks of docs/benchmarks.md, side by side in one run (`make bench`).

    python bench/run.py --messages 1000000            # everything, SQLite and PostgreSQL
    python bench/run.py --messages 20000 --only ingest,dashboard --db sqlite
    python bench/run.py --only ingest --compare-root ../other-checkout   # before and after

Seeded databases are kept in bench/.data (SQLite) and in PostgreSQL databases named
viberwatch_bench_<N>, and reused by later runs with the same N (--fresh seeds again).
Results are printed as Markdown tables and written to bench/.data/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import ingest as ingest_bench
import ingest_phases
import psycopg
from report import markdown
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / ".data"
BIN = Path(sys.executable).parent
PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
USER, PASSWORD = "bench", "bench-password-1"
TARGET_MS = 50.0


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def pg_database(name: str, fresh: bool) -> str:
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER}/{name}"


def database(kind: str, name: str, fresh: bool) -> str:
    if kind == "sqlite":
        DATA.mkdir(parents=True, exist_ok=True)
        path = DATA / f"{name}.db"
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        return f"sqlite:///{path}"
    return pg_database(f"viberwatch_{name}", fresh)


def viberwatch(
    url: str, *args: str, quiet: bool = False, check: bool = True
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "viberwatch"), *args],
        cwd=ROOT,
        check=check,
        text=True,
        env={**os.environ, "DATABASE_URL": url},
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.PIPE if quiet else None,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(
    url: str,
    workers: int | None = None,
    noop: bool = False,
    with_pid: bool = False,
    root: Path = ROOT,
):
    """The production command, `gunicorn -c gunicorn.conf.py 'app:create_app()'`, on `url`,
    of the checkout at `root`; yields its base URL (and its master's pid `with_pid`)."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "HOST": "127.0.0.1", "PORT": str(port)}
    if workers:
        env["WEB_CONCURRENCY"] = str(workers)
    if noop:
        env["VIBERWATCH_BENCH_NOOP"] = "true"
    proc = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:create_app()"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the server did not start")
        time.sleep(0.3)
    try:
        yield (base, proc.pid) if with_pid else base
    finally:
        proc.terminate()
        proc.wait(30)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


# --- ingest (bench/ingest.py) -----------------------------------------------------------------


def bench_ingest(
    kind: str, seconds: int, connections: int, url: str | None = None, root: Path = ROOT
) -> dict:
    """On a fresh database unless `url` names one (the seeded million); the server of the
    checkout at `root`."""
    label = "seeded" if url else "fresh"
    if url is None:
        url = database(kind, f"bench_ingest_{connections}", fresh=True)
        viberwatch(url, "db", "upgrade", quiet=True)
    return ingest_bench.run(
        kind,
        url,
        seconds,
        connections,
        label=label,
        server=partial(server, root=root),
        viberwatch=viberwatch,
    )


def compare_ingest(kinds, connections, seconds: int, other: Path) -> list[dict]:
    """The ingest benchmark of this checkout and of `other`, side by side: each database and
    number of connections runs this one, then the other, in turn."""
    out = []
    for kind in kinds:
        for n in connections:
            for code, root in (("this checkout", ROOT), (str(other), other)):
                log(f"ingest on {kind}, fresh database, {n} connections: {code}")
                out.append({**bench_ingest(kind, seconds, n, root=root), "code": code})
    return out


def comparison_markdown(rows: list[dict]) -> str:
    lines = [
        "| code | database | connections | no-op/s | webhooks/s | ratio | p99 ms | "
        "server CPU ms per webhook |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['code']} | {r['db']} | {r['connections']} | {r['noop_rate']:,.0f} | "
            f"{r['ingest_rate']:,.0f} | {r['ratio']:.2f} | {r['ingest_p99_ms']:.0f} | "
            f"{r['ingest_cpu_ms']:.2f} |"
        )
    return "\n".join(lines)


# --- seeded databases -------------------------------------------------------------------------


def seeded(kind: str, messages: int, replies: int, fresh: bool) -> tuple[str, float | None]:
    """A database with `messages` seeded messages; the seconds seeding took, None if reused."""
    name = f"bench_{messages}"
    marker = DATA / f"{kind}-{messages}.seeded"
    url = database(kind, name, fresh=fresh or not marker.exists())
    if marker.exists() and not fresh:
        # Migrations added since the seeding.
        viberwatch(url, "db", "upgrade", quiet=True)
        return url, None
    viberwatch(url, "db", "upgrade", quiet=True)
    start = time.perf_counter()
    viberwatch(
        url,
        "seed",
        "--messages",
        str(messages),
        "--replies",
        str(replies),
        "--random-seed",
        "1",
        "--batch",
        "5000",
    )
    took = time.perf_counter() - start
    if kind == "postgresql":
        engine = create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
        engine.dispose()
    else:
        engine = create_engine(sqlalchemy_url(url))
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        engine.dispose()
    marker.write_text(json.dumps({"seconds": took}))
    return url, took


def ensure_user(url: str) -> None:
    try:
        viberwatch(url, "create-user", USER, "--role", "admin", "--password", PASSWORD, quiet=True)
    except subprocess.CalledProcessError:
        viberwatch(url, "set-password", USER, "--password", PASSWORD, quiet=True)


def samples(url: str) -> dict:
    """Real values from the seeded data for the filters, a thread and a message page."""
    engine = create_engine(sqlalchemy_url(url))
    with engine.connect() as conn:
        phone = conn.execute(
            text("SELECT phone FROM contact ORDER BY messages_count DESC, phone LIMIT 1")
        ).scalar()
        rid = conn.execute(
            text(
                "SELECT request_id FROM message WHERE replies_count > 0 AND receipts_count >= 3 "
                "ORDER BY request_id LIMIT 1"
            )
        ).scalar()
        last = conn.execute(text("SELECT MAX(last_activity_at) FROM message")).scalar()
    engine.dispose()
    day = str(last)[:10]
    return {"phone": phone, "rid": rid, "day": day}


def dashboard_targets(s: dict) -> list[tuple[str, str]]:
    from datetime import date, timedelta

    week_ago = (date.fromisoformat(s["day"]) - timedelta(days=6)).isoformat()
    filters = [
        ("no filter", ""),
        ("status=seen", "status=seen"),
        ("status=failed", "status=failed"),
        ("status=pending", "status=pending"),
        ("status=delivered,seen", "status=delivered&status=seen"),
        ("code=11003", "code=11003"),
        ("phone (exact)", f"phone={s['phone']}"),
        ("phone (prefix)", f"phone={s['phone'][:6]}"),
        ("requestId prefix", f"q={s['rid'][:5]}"),
        ("last 7 days", f"from={week_ago}&to={s['day']}"),
        ("anomalies", "anomaly=1"),
        ("seen, last 7 days", f"status=seen&from={week_ago}&to={s['day']}"),
    ]
    return filters


def login(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=60)
    page = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    r = client.post(
        "/login",
        data={
            "username": USER,
            "password": PASSWORD,
            "csrf_token": token.group(1) if token else "",
        },
    )
    if r.status_code not in (302, 303):
        raise RuntimeError(f"login failed: {r.status_code}")
    return client


def timed(client: httpx.Client, path: str, repeat: int, headers: dict | None = None) -> dict:
    for _ in range(3):
        client.get(path, headers=headers)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        r = client.get(path, headers=headers)
        times.append((time.perf_counter() - start) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code}")
    return {"p50": statistics.median(times), "p95": percentile(times, 95), "max": max(times)}


def counters_times(url: str, targets: list[tuple[str, str]], repeat: int) -> dict:
    """The counters block alone, in process: MessageFilter -> listing.counters_for."""
    from urllib.parse import parse_qsl

    from werkzeug.datastructures import MultiDict

    os.environ["DATABASE_URL"] = url
    sys.path.insert(0, str(ROOT))
    from app import create_app
    from app.dashboard.filters import MessageFilter
    from app.dashboard.listing import counters_for
    from app.records.models import db

    app = create_app()
    out = {}
    with app.app_context():
        for name, query in targets:
            flt = MessageFilter.from_args(MultiDict(parse_qsl(query)))
            counters_for(flt)
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                counters_for(flt)
                times.append((time.perf_counter() - start) * 1000)
                db.session.rollback()
            out[name] = {"p50": statistics.median(times), "p95": percentile(times, 95)}
        db.engine.dispose()
    del os.environ["DATABASE_URL"]
    return out


def bench_dashboard(kind: str, url: str, repeat: int) -> dict:
    ensure_user(url)
    s = samples(url)
    targets = dashboard_targets(s)
    rows = []
    with server(url, workers=2) as base:
        client = login(base)
        for name, query in targets:
            path = "/?" + query if query else "/"
            page = timed(client, path, repeat)
            fragment = timed(client, path, repeat, headers={"HX-Request": "true"})
            rows.append({"what": f"messages: {name}", "page": page, "fragment": fragment})
        for what, path in (
            ("conversations list", "/conversations"),
            (f"thread ({s['phone']})", f"/conversations/{s['phone']}"),
            ("message page", f"/messages/{s['rid']}"),
        ):
            rows.append({"what": what, "page": timed(client, path, repeat)})
        client.close()
    counters = counters_times(url, targets, repeat)
    return {"db": kind, "rows": rows, "counters": counters}


# --- export and rebuild -----------------------------------------------------------------------


def export_child(*args: str, script: str = "export_child.py") -> dict:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


EXPORT_ROUNDS = 5


def bench_export(kind: str, url: str) -> dict:
    """GET /export.csv of every message beside the baseline (a bare sqlite3 + csv loop, or
    COPY read by psycopg), alternating, best of EXPORT_ROUNDS each; then the replies once, and
    what each kind of cell costs the database (bench/export_cost.py)."""
    ensure_user(url)
    baseline = ("bare", url[len("sqlite:///") :]) if kind == "sqlite" else ("copy", url)
    runs: dict[str, list] = {"app": [], "baseline": []}
    for _ in range(EXPORT_ROUNDS):
        runs["baseline"].append(export_child(*baseline))
        runs["app"].append(export_child("app", url, USER, PASSWORD))
    best = {what: min(r, key=lambda x: x["seconds"]) for what, r in runs.items()}
    return {
        "db": kind,
        "baseline_kind": baseline[0],
        **best,
        "rounds": runs,
        "replies": export_child("app", url, USER, PASSWORD, "kind=replies"),
        "cost": export_child(url, script="export_cost.py"),
    }


def bench_rebuild(kind: str, url: str) -> dict:
    engine = create_engine(sqlalchemy_url(url))
    with engine.connect() as conn:
        receipts = conn.execute(text("SELECT COUNT(*) FROM receipt")).scalar()
        messages = conn.execute(text("SELECT COUNT(*) FROM message")).scalar()
    engine.dispose()
    start = time.perf_counter()
    out = viberwatch(url, "rebuild", "--check", quiet=True).stdout
    took = time.perf_counter() - start
    return {
        "db": kind,
        "seconds": took,
        "receipts": receipts,
        "messages": messages,
        "report": out.strip().splitlines()[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument(
        "--replies", type=int, default=None, help="default: a fifth of the messages"
    )
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--only", default="ingest,dashboard,export,rebuild,ingest-seeded")
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument(
        "--connections", default="32,256", help="concurrent connections of the ingest runs"
    )
    parser.add_argument("--repeat", type=int, default=40, help="timed requests per dashboard view")
    parser.add_argument(
        "--fresh", action="store_true", help="seed again even if a seeded database exists"
    )
    parser.add_argument(
        "--compare-root",
        type=Path,
        help="with --only ingest: also run the ingest benchmark of this other checkout, in turn",
    )
    args = parser.parse_args()
    kinds = args.db.split(",")
    only = set(args.only.split(","))
    replies = args.messages // 5 if args.replies is None else args.replies
    results: dict = {"messages": args.messages, "replies": replies, "seed": []}
    connections = [int(c) for c in args.connections.split(",")]
    if args.compare_root is not None:
        rows = compare_ingest(kinds, connections, args.seconds, args.compare_root.resolve())
        DATA.mkdir(parents=True, exist_ok=True)
        (DATA / "compare.json").write_text(json.dumps(rows, indent=2, default=str))
        print(comparison_markdown(rows))
        return
    if "ingest" in only:
        results["ingest"] = []
        for kind in kinds:
            for n in connections:
                log(f"ingest on {kind}, fresh database, {n} connections")
                results["ingest"].append(bench_ingest(kind, args.seconds, n))
        log("where an ingest transaction's CPU time goes, in process")
        results["phases"] = {
            kind: ingest_phases.measure(
                None
                if kind == "sqlite"
                else sqlalchemy_url(database(kind, "bench_ingest_phases", fresh=True))
            )
            for kind in kinds
        }
    urls = {}
    if only & {"dashboard", "export", "rebuild", "ingest-seeded"}:
        log(
            f"seeding {args.messages} messages on {', '.join(kinds)} at once (reused when already there)"
        )
        with ThreadPoolExecutor(len(kinds)) as pool:
            done = dict(
                zip(
                    kinds,
                    pool.map(lambda k: seeded(k, args.messages, replies, args.fresh), kinds),
                    strict=False,
                )
            )
        for kind, (url, took) in done.items():
            urls[kind] = url
            results["seed"].append(
                {
                    "db": kind,
                    "messages": args.messages,
                    "replies": replies,
                    "seconds": took,
                    "parallel": len(kinds),
                }
            )
    for kind in urls:
        url = urls[kind]
        if "dashboard" in only:
            log(f"dashboard on {kind}")
            results.setdefault("dashboard", []).append(bench_dashboard(kind, url, args.repeat))
        if "export" in only:
            log(f"export on {kind}")
            results.setdefault("export", []).append(bench_export(kind, url))
        if "rebuild" in only:
            log(f"rebuild on {kind}")
            results.setdefault("rebuild", []).append(bench_rebuild(kind, url))
        # Last: it adds messages to the seeded database.
        if "ingest-seeded" in only:
            for n in connections:
                log(f"ingest on {kind}, {args.messages:,} messages, {n} connections")
                results.setdefault("ingest", []).append(
                    bench_ingest(kind, args.seconds, n, url=url)
                )
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(markdown(results))


if __name__ == "__main__":
    main()
