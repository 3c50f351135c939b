"""Roles and the audit log, before and after, side by side in one run: what the role check of
every signed-in request and the audit write at the end of every CSV export cost the ingest,
the messages page and the export.

    python bench/access_cost.py [--before a11fc0e] [--messages 200000] [--rounds 5]
                                [--db sqlite,postgresql] [--write-docs]

"Before" is the tree of the commit before the roles (`git archive`, extracted into a temporary
folder), "after" the working tree. Each runs from its own tree with this virtualenv's python
and gunicorn (its own `app` package first on PYTHONPATH): its own `viberwatch db upgrade`
builds its own database, its own `viberwatch seed --messages N --random-seed 1` fills it (both
at the same time), its own `create-user` makes the same user (an admin where roles exist);
then the production command, `gunicorn -c gunicorn.conf.py 'app:create_app()'`, serves each,
with the same settings (secret key, workers, threads, an instance folder each), both up at
once on two ports. Before measuring, each signed-in server is asked for /admin/users: 404
from a tree without the admin pages, 200 from one with them, or the run stops.

Measured in alternating rounds (before then after in odd rounds, after then before in even
ones), so that load from elsewhere on the machine falls on both:

- page: GET / signed in, --page-requests sequential requests a round on a kept-alive
  connection (after a few untimed ones); p50 and p95 of each round;
- export: GET /export.csv of every seeded message, signed in, streamed to its end (after
  writes its audit record before the response ends); seconds of each round;
- ingest, last as it adds messages: wrk (bench/ingest.lua, 2 threads, --connections) posting
  the receipts and replies of ever new messages for --seconds; webhooks/s of each round.

Each side warms up first (pages and an export; 3 s of wrk before the ingest rounds). Every
export must have as many rows as messages were seeded. The figure of a side is the
median of its rounds; the cost is how much worse after is than before (fewer webhooks/s, more
ms or seconds), in %. Target: at most 5 % each. Results go to bench/.data/access-cost.json;
--write-docs writes the section of docs/benchmarks.md between its access-cost markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, inspect, text

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import ingest as ingest_bench  # noqa: E402
from report import write_between  # noqa: E402
from run import (  # noqa: E402
    BIN,
    DATA,
    PASSWORD,
    ROOT,
    USER,
    database,
    free_port,
    login,
    percentile,
    sqlalchemy_url,
)

from app.config import process  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- access-cost:start -->", "<!-- access-cost:end -->"
TARGET = 5.0
SIDES = ("before", "after")
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
WARM_PAGES = 20
ROUND_WARM_PAGES = 3


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class Tree:
    """One side: the code it runs (`root`), what it is, and the secret both sides share."""

    side: str
    root: Path
    rev: str
    label: str
    work: Path
    secret: str

    def env(self, url: str, kind: str) -> dict[str, str]:
        instance = self.work / f"instance-{self.side}-{kind}"
        instance.mkdir(mode=0o700, exist_ok=True)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "PYTHONPATH": str(self.root),
            "VIBERWATCH_INSTANCE_PATH": str(instance),
            "VIBERWATCH_SECRET_KEY": self.secret,
        }
        for name in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "VIBERWATCH_BENCH_NOOP"):
            env.pop(name, None)
        return env

    def viberwatch(self, url: str, kind: str, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "viberwatch"), *args],
            cwd=self.root,
            env=self.env(url, kind),
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(
                f"{self.side}: viberwatch {' '.join(args)} failed:\n{done.stderr[-2000:]}"
            )
        return done.stdout

    def has_roles(self) -> bool:
        return (self.root / "app" / "auth" / "roles.py").exists()

    def has_admin_pages(self) -> bool:
        return (self.root / "app" / "admin").is_dir()


def trees(before_rev: str, work: Path) -> dict[str, Tree]:
    """The tree of `before_rev` extracted into `work`, and the working tree."""
    full = git("rev-parse", "--verify", f"{before_rev}^{{commit}}")
    folder = work / "before"
    folder.mkdir()
    archive = subprocess.Popen(["git", "archive", full], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(folder)], stdin=archive.stdout, check=True)
    archive.stdout.close()
    if archive.wait():
        raise RuntimeError(f"git archive {full} failed")
    head = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--", "app", "migrations", "templates", "static")
    secret = uuid.uuid4().hex
    return {
        "before": Tree("before", folder, full[:7], f"{full[:7]} (`git archive`)", work, secret),
        "after": Tree(
            "after",
            ROOT,
            head,
            f"the working tree at {head}" + (" (app files changed since)" if changed else ""),
            work,
            secret,
        ),
    }


# --- databases ---------------------------------------------------------------------------------


def prepare(tree: Tree, kind: str, messages: int) -> dict:
    """A fresh database of this side, built and seeded by its own code, with the user."""
    url = database(kind, f"access_{tree.side}", fresh=True)
    tree.viberwatch(url, kind, "db", "upgrade")
    start = time.perf_counter()
    tree.viberwatch(
        url, kind, "seed", "--messages", str(messages), "--random-seed", "1", "--batch", "5000"
    )
    seeded = time.perf_counter() - start
    if kind == "postgresql":
        engine = create_engine(sqlalchemy_url(url), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        engine = create_engine(sqlalchemy_url(url))
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    engine.dispose()
    role = ["--role", "admin"] if tree.has_roles() else []
    tree.viberwatch(url, kind, "create-user", USER, *role, "--password", PASSWORD)
    return {"url": url, "seed_seconds": seeded}


def count_rows(url: str, sql: str) -> int:
    engine = create_engine(sqlalchemy_url(url))
    with engine.connect() as conn:
        n = conn.execute(text(sql)).scalar()
    engine.dispose()
    return int(n)


def has_table(url: str, name: str) -> bool:
    engine = create_engine(sqlalchemy_url(url))
    try:
        return inspect(engine).has_table(name)
    finally:
        engine.dispose()


def export_records(url: str) -> int | None:
    if not has_table(url, "audit_record"):
        return None
    return count_rows(url, "SELECT COUNT(*) FROM audit_record WHERE action = 'export'")


# --- servers -----------------------------------------------------------------------------------


@contextmanager
def serve(tree: Tree, url: str, kind: str, workers: int | None):
    """The production command of `tree` on `url`; yields its base URL."""
    port = free_port()
    env = {**tree.env(url, kind), "HOST": "127.0.0.1", "PORT": str(port)}
    if workers:
        env["WEB_CONCURRENCY"] = str(workers)
    DATA.mkdir(parents=True, exist_ok=True)
    errors = open(DATA / f"access-{tree.side}-{kind}.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:create_app()"],
        cwd=tree.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {tree.side} server did not start ({errors.name})")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errors.close()


def get(client: httpx.Client, path: str) -> httpx.Response:
    """A GET that tries once more when the server closed the kept-alive connection."""
    try:
        return client.get(path)
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return client.get(path)


def check_code(tree: Tree, client: httpx.Client) -> int:
    """/admin/users: 200 from a tree with the admin pages, 404 from one without."""
    status = get(client, "/admin/users").status_code
    expected = 200 if tree.has_admin_pages() else 404
    if status != expected:
        raise RuntimeError(
            f"the {tree.side} server answered /admin/users {status}, not {expected}: "
            f"it does not run the code of {tree.root}"
        )
    return status


# --- the three benchmarks ----------------------------------------------------------------------


def page_round(client: httpx.Client, requests: int) -> dict:
    for _ in range(ROUND_WARM_PAGES):
        get(client, "/")
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        r = client.get("/")
        times.append((time.perf_counter() - start) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET /: {r.status_code}")
    return {"p50": statistics.median(times), "p95": percentile(times, 95)}


def export_round(client: httpx.Client, messages: int) -> dict:
    start = time.perf_counter()
    lines = size = 0
    with client.stream("GET", "/export.csv") as r:
        if r.status_code != 200:
            raise RuntimeError(f"GET /export.csv: {r.status_code}")
        for chunk in r.iter_raw():
            size += len(chunk)
            # The seeded cells hold no line breaks: one per row, and one for the header.
            lines += chunk.count(b"\n")
    took = time.perf_counter() - start
    if lines - 1 != messages:
        raise RuntimeError(f"GET /export.csv gave {lines - 1} rows, not {messages}")
    return {"seconds": took, "rows": lines - 1, "bytes": size}


def ingest_round(base: str, seconds: int, tag: str, connections: int) -> dict:
    r = ingest_bench.wrk(base, seconds, tag, connections, noop=False)
    return {"rate": r["rate"], "p99_ms": r["p99_us"] / 1000, "errors": r["errors"]}


def in_turn(rounds: int):
    """(round, side) in the order measured: before first in the first, third... round, after
    first in the others."""
    for i in range(rounds):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            yield i, side


def measure(kind: str, sides: dict[str, Tree], args) -> dict:
    log(f"{kind}: seeding {args.messages:,} messages for before and after at once")
    with ThreadPoolExecutor(len(SIDES)) as pool:
        prepared = dict(
            zip(
                SIDES,
                pool.map(lambda s: prepare(sides[s], kind, args.messages), SIDES),
                strict=True,
            )
        )
    urls = {s: prepared[s]["url"] for s in SIDES}
    log(
        f"{kind}: seeded in "
        + ", ".join(f"{prepared[s]['seed_seconds']:.0f} s ({s})" for s in SIDES)
    )
    out: dict = {
        "db": kind,
        "seed_seconds": {s: prepared[s]["seed_seconds"] for s in SIDES},
        "messages": {s: count_rows(urls[s], "SELECT COUNT(*) FROM message") for s in SIDES},
        "audit_table": {s: has_table(urls[s], "audit_record") for s in SIDES},
        "load_before_measuring": os.getloadavg()[0],
    }
    with ExitStack() as stack:
        bases = {
            s: stack.enter_context(serve(sides[s], urls[s], kind, args.workers)) for s in SIDES
        }
        clients = {s: login(bases[s]) for s in SIDES}
        for client in clients.values():
            stack.callback(client.close)
        out["admin_users_status"] = {s: check_code(sides[s], clients[s]) for s in SIDES}
        audit0 = {s: export_records(urls[s]) for s in SIDES}

        log(f"{kind}: warming up")
        for s in SIDES:
            for _ in range(WARM_PAGES):
                get(clients[s], "/")
            export_round(clients[s], out["messages"][s])
        exports_made = 1

        pages: dict[str, list] = {s: [] for s in SIDES}
        for i, s in in_turn(args.rounds):
            pages[s].append(page_round(clients[s], args.page_requests))
            log(f"{kind}: page round {i + 1} {s}: p50 {pages[s][-1]['p50']:.1f} ms")
        exports: dict[str, list] = {s: [] for s in SIDES}
        for i, s in in_turn(args.rounds):
            exports[s].append(export_round(clients[s], out["messages"][s]))
            log(f"{kind}: export round {i + 1} {s}: {exports[s][-1]['seconds']:.2f} s")
        exports_made += args.rounds
        audit1 = {s: export_records(urls[s]) for s in SIDES}
        for s in SIDES:
            ingest_bench.wrk(bases[s], 3, f"w{s[0]}", args.connections, noop=False)
        ingests: dict[str, list] = {s: [] for s in SIDES}
        for i, s in in_turn(args.rounds):
            ingests[s].append(ingest_round(bases[s], args.seconds, f"{i}{s[0]}", args.connections))
            log(f"{kind}: ingest round {i + 1} {s}: {ingests[s][-1]['rate']:,.0f} webhooks/s")
    for s in SIDES:
        (DATA / f"access-{s}-{kind}.log").unlink(missing_ok=True)
    out.update(
        {
            "page": pages,
            "export": exports,
            "ingest": ingests,
            "ingested": {
                s: count_rows(urls[s], "SELECT COUNT(*) FROM message") - out["messages"][s]
                for s in SIDES
            },
            "exports_made": exports_made,
            "export_records_written": {
                s: None if audit0[s] is None else audit1[s] - audit0[s] for s in SIDES
            },
        }
    )
    return out


# --- figures -----------------------------------------------------------------------------------


def cost(before: float, after: float, higher_is_better: bool) -> float:
    """How much worse after is than before, in % (negative: better)."""
    worse = before - after if higher_is_better else after - before
    return worse / before * 100


def compare(before: list[float], after: list[float], higher_is_better: bool) -> dict:
    b, a = statistics.median(before), statistics.median(after)
    return {
        "before": b,
        "after": a,
        "cost": cost(b, a, higher_is_better),
        "rounds": [cost(x, y, higher_is_better) for x, y in zip(before, after, strict=True)],
    }


def figures(r: dict) -> list[tuple[str, dict, str]]:
    """(what, comparison, number format) of each benchmark."""
    page, export, ingest = r["page"], r["export"], r["ingest"]
    rows = export["after"][0]["rows"]
    return [
        (
            f"ingest: webhooks/s (wrk, {r['connections']} connections, {r['seconds']} s a round)",
            compare(
                [x["rate"] for x in ingest["before"]], [x["rate"] for x in ingest["after"]], True
            ),
            "{:,.0f}",
        ),
        (
            f"messages page, `GET /`: p50 ms ({r['page_requests']} requests a round)",
            compare([x["p50"] for x in page["before"]], [x["p50"] for x in page["after"]], False),
            "{:.1f}",
        ),
        (
            "messages page, `GET /`: p95 ms",
            compare([x["p95"] for x in page["before"]], [x["p95"] for x in page["after"]], False),
            "{:.1f}",
        ),
        (
            f"export, `GET /export.csv` of {rows:,} messages: seconds",
            compare(
                [x["seconds"] for x in export["before"]],
                [x["seconds"] for x in export["after"]],
                False,
            ),
            "{:.2f}",
        ),
    ]


def signed(value: float) -> str:
    return f"{value:+.1f} %"


def kind_markdown(r: dict, sides: dict[str, Tree]) -> list[str]:
    lines = [
        f"#### {NAMES[r['db']]}",
        "",
        f"| benchmark | before ({sides['before'].rev}) | after ({sides['after'].rev}) | "
        "cost of after | cost in each round | target: at most 5 % |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    verdicts = []
    for what, c, fmt in figures(r):
        met = c["cost"] <= TARGET
        verdicts.append(met)
        lines.append(
            f"| {what} | {fmt.format(c['before'])} | {fmt.format(c['after'])} | "
            f"{signed(c['cost'])} | {', '.join(signed(x) for x in c['rounds'])} | "
            f"{'met' if met else '**not met**'} |"
        )
    rows = {s: sorted({x["rows"] for x in r["export"][s]}) for s in SIDES}
    written = r["export_records_written"]
    audit = {
        s: "no audit_record table"
        if written[s] is None
        else f"{written[s]} export audit records written by its {r['exports_made']} exports"
        for s in SIDES
    }
    errors = {s: sum(x["errors"] for x in r["ingest"][s]) for s in SIDES}
    p99 = {s: max(x["p99_ms"] for x in r["ingest"][s]) for s in SIDES}
    lines += [
        "",
        f"Target {'met' if all(verdicts) else 'not met'} on {NAMES[r['db']]}. Checks: "
        + "; ".join(
            f"{s}: `/admin/users` answered {r['admin_users_status'][s]}, "
            f"{r['messages'][s]:,} messages seeded, rows per export "
            f"{', '.join(f'{n:,}' for n in rows[s])}, {audit[s]}; "
            f"{r['ingested'][s]:,} messages added by wrk, wrk errors {errors[s]} "
            f"(webhook p99 at most {p99[s]:.0f} ms)"
            for s in SIDES
        )
        + f". Load average {r['load_before_measuring']:.1f} when the measuring began.",
        "",
    ]
    return lines


def machine() -> str:
    with open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
    return f"{os.cpu_count()} cores, {kb / 1024**2:.0f} GiB"


def markdown(results: dict, sides: dict[str, Tree]) -> str:
    head = [
        f"Measured {results['date']} by `{results['command']}` ({machine()}; load average "
        f"{results['load_start']:.1f} at the start, {results['load_end']:.1f} at the end): "
        f"before is {sides['before'].label}, after {sides['after'].label}; "
        f"{results['messages']:,} messages on each side (`viberwatch seed --messages "
        f"{results['messages']} --random-seed 1`, both at once), the production command with "
        f"{results['workers_text']}, {results['rounds']} rounds of each benchmark, before "
        "first in odd rounds and after first in even ones. The figure of a side is the median "
        "of its rounds; the cost of after is how much fewer webhooks/s, or how many more ms "
        "or seconds, it took than before (negative: it took less).",
        "",
    ]
    body = []
    for r in results["runs"]:
        body += kind_markdown(r, sides)
    return "\n".join(head + body).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--before", default="a11fc0e", help="the commit before the roles (32f5769's parent)"
    )
    parser.add_argument("--messages", type=int, default=200_000, help="seeded on each side")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each benchmark")
    parser.add_argument("--page-requests", type=int, default=300, help="timed GET / a round")
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk round")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--workers", type=int, default=None, help="default: gunicorn.conf.py's")
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    kinds = args.db.split(",")
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="vw-access-"))
    try:
        sides = trees(args.before, work)
        log(f"before: {sides['before'].label} in {sides['before'].root}")
        log(f"after: {sides['after'].label}")
        runs = []
        for kind in kinds:
            r = measure(kind, sides, args)
            r.update(
                connections=args.connections,
                seconds=args.seconds,
                page_requests=args.page_requests,
            )
            runs.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/access_cost.py " + shlex.join(sys.argv[1:]),
        "before": sides["before"].rev,
        "after": sides["after"].rev,
        "messages": args.messages,
        "rounds": args.rounds,
        "workers_text": f"{args.workers} workers"
        if args.workers
        else f"the workers of `gunicorn.conf.py` ({process('WEB_CONCURRENCY')} here)",
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "runs": runs,
    }
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "access-cost.json").write_text(json.dumps(results, indent=2, default=str))
    text_ = markdown(results, sides)
    print(text_)
    if args.write_docs:
        write_between(DOCS, START, END, text_)


if __name__ == "__main__":
    main()
