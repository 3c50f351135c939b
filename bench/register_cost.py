"""The ingest committer's CPU per bulk registration (`python bench/register_cost.py`).

Bulk registrations (`POST /api/messages` with a JSON array) reach the committer as one job per
item, handed over by a worker with `client.submit_many`; the committer applies what it has read
in one batch (at most INGEST_BATCH_MAX to a transaction) and answers. This starts the committer
as the server does (`python -m app.cli ingest-committer SOCKET`) on a fresh database and hands
it bulk requests of `--size` registrations the same way, without the HTTP server in front, in
three rounds of `--batches` requests:

    new             fresh requestIds
    half existing   half the ids registered in the round before (with one more tag), half new
    with receipts   fresh ids, and a receipt for half of them: a quarter of the request's own
                    ids in the same request (before or after their registration), a quarter of
                    the next request's ids (the message known by its receipt first), and a
                    delivered receipt for a quarter of the request before's ids

Each round gives the committer's CPU time per registration (from /proc), its wall time, and on
PostgreSQL the CPU of the database server's processes serving it. Every body must be answered
2xx. With `--other` a second checkout (e.g. `git worktree add` of the commit before) runs the
same rounds with its own committer on its own fresh database, this checkout and it
alternating, so both see the same load. `--profile` samples each checkout's committer once
with py-spy first; `--instructions` also counts each round's instructions per registration
under callgrind (counts, unlike times, do not depend on the machine's load; slow).

    python bench/register_cost.py [--db sqlite,postgresql] [--repeat 3] [--other PATH]
                                  [--batches 20] [--size 1000] [--rounds new,...]
                                  [--profile] [--instructions]

(The rounds run in this order on one database: "half existing" registers again ids of "new".)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import ingest as ingest_bench
import psycopg
from run import DATA, ROOT, database, log, viberwatch

sys.path.insert(0, str(ROOT))

from app.ingest import new_job  # noqa: E402
from app.ingest.committer import client  # noqa: E402

ROUNDS = ("new", "half existing", "with receipts")
HEADERS = {"Content-Type": "application/json", "User-Agent": "bench-register-cost"}
ANSWER_SECONDS = 600


def registration(rid: str, n: int, tags: list[str]) -> dict:
    return {"requestId": rid, "phone": f"+7{n:010d}", "text": f"Your code is {n}", "tags": tags}


def receipt(rid: str, status: str) -> dict:
    return {
        "status": status,
        "requestId": rid,
        "code": 0 if status == "success" else 11001,
        "message": "Successfully sent." if status == "success" else "Viber message has delivered",
        "sendTime": "2024-05-01 10:00:00",
    }


def work(batches: int, size: int) -> dict[str, list[list[tuple[str, bytes]]]]:
    """Each round's requests, each a list of (endpoint, body); the same for every checkout."""
    rng = random.Random(7)
    new = [[f"new-{b:03d}-{i:05d}" for i in range(size)] for b in range(batches)]
    later = [[f"rcp-{b:03d}-{i:05d}" for i in range(size)] for b in range(batches + 1)]
    out: dict[str, list] = {name: [] for name in ROUNDS}
    for b in range(batches):
        out["new"].append(
            [
                ("register", registration(rid, b * size + i, ["bench"]))
                for i, rid in enumerate(new[b])
            ]
        )
        half = size // 2
        mixed = [
            ("register", registration(rid, b * size + i, ["bench", "again"]))
            for i, rid in enumerate(new[b][:half])
        ] + [
            ("register", registration(f"half-{b:03d}-{i:05d}", i, ["bench"]))
            for i in range(size - half)
        ]
        rng.shuffle(mixed)
        out["half existing"].append(mixed)
        q = size // 4
        items = [
            ("register", registration(rid, i, ["bench", f"b{b % 7}"]))
            for i, rid in enumerate(later[b])
        ]
        for rid in later[b][:q]:  # the request's own: before or after the registration
            items.insert(rng.randrange(len(items) + 1), ("dr", receipt(rid, "success")))
        items += [("dr", receipt(rid, "success")) for rid in later[b + 1][q : 2 * q]]
        if b:
            items += [("dr", receipt(rid, "delivered")) for rid in later[b - 1][2 * q : 3 * q]]
        out["with receipts"].append(items)
    return {
        name: [[(e, json.dumps(body).encode()) for e, body in request] for request in requests]
        for name, requests in out.items()
    }


# --- one committer, one database -------------------------------------------------------------

# Counting instructions: valgrind runs the committer uninstrumented until a round starts
# (callgrind_control switches it on, then dumps and switches it off), with the C allocator.
CALLGRIND = (
    "valgrind",
    "--tool=callgrind",
    "--instr-atstart=no",
    "--dump-instr=no",
)


class Committer:
    """The committer of the checkout at `root` on `url`, as the server starts it."""

    def __init__(self, root: Path, url: str, folder: str, counted: bool):
        self.path = os.path.join(folder, "committer.sock")
        self.dumps = os.path.join(folder, "callgrind.out")
        env = {**os.environ, "DATABASE_URL": url, "VIBERWATCH_SPOOL_FOLDER": folder}
        env.pop(client.SOCKET_ENV, None)
        command = [sys.executable, "-m", "app.cli", "ingest-committer", self.path]
        if counted:
            env["PYTHONMALLOC"] = "malloc"  # valgrind follows the C allocator
            command = [*CALLGRIND, f"--callgrind-out-file={self.dumps}", *command]
        self.counted = counted
        self.proc = subprocess.Popen(command, cwd=root, env=env)
        deadline = time.monotonic() + 600
        while not os.path.exists(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the committer of {root} did not start")
            time.sleep(0.1)
        self.url = url
        # The client keeps a connection per thread: one thread of its own talks to this one.
        self.thread = ThreadPoolExecutor(1)

    def apply(self, request: list[tuple[str, bytes]]) -> list:
        jobs = [
            new_job(endpoint, body, "application/json", HEADERS, "127.0.0.1")
            for endpoint, body in request
        ]
        results = self.thread.submit(client.submit_many, self.path, jobs, ANSWER_SECONDS).result()
        bad = [r for r in results if r is None or not r.ok]
        assert not bad, bad[:3]
        return results

    def cpu(self) -> float:
        return ingest_bench.cpu_seconds([self.proc.pid])

    def database_cpu(self) -> float | None:
        """CPU seconds of the PostgreSQL processes serving this database (None on SQLite)."""
        if not self.url.startswith("postgresql"):
            return None
        name = self.url.rsplit("/", 1)[1]
        with psycopg.connect(self.url) as conn:
            pids = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchall()
        return ingest_bench.cpu_seconds([pid for (pid,) in pids])

    @contextmanager
    def counting(self, out: dict):
        """Instructions the committer runs inside the block, in `out["instructions"]`."""
        if not self.counted:
            yield
            return

        def control(*options: str) -> None:
            command = ["callgrind_control", *options, str(self.proc.pid)]
            subprocess.run(command, check=True, capture_output=True)

        control("--zero")
        control("--instr=on")
        yield
        control("--dump")
        control("--instr=off")
        dumped = Path(self.dumps).parent.glob(Path(self.dumps).name + ".*")
        text = max(dumped, key=lambda p: p.stat().st_mtime).read_text()
        out["instructions"] = int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))

    def stop(self) -> None:
        self.thread.shutdown()
        self.proc.terminate()
        self.proc.wait(120)


def measure(kind: str, root: Path, args, profile: Path | None = None) -> dict:
    """The rounds on a fresh database: figures per round."""
    url = database(kind, "register_cost", fresh=True)
    viberwatch(url, "db", "upgrade", quiet=True)
    rounds = work(args.batches, args.size)
    out = {}
    with tempfile.TemporaryDirectory(prefix="vw-register-cost-") as folder:
        committer = Committer(root, url, folder, args.instructions and profile is None)
        try:
            for request in work(2, args.size)["new"]:  # warm: statements compiled, caches filled
                committer.apply([(e, body.replace(b"new-", b"warm-")) for e, body in request])
            spy = ingest_bench.profile(committer.proc.pid, 3600, profile) if profile else None
            for name in args.rounds.split(","):
                figures = {}
                cpu, db, wall = committer.cpu(), committer.database_cpu(), time.perf_counter()
                with committer.counting(figures):
                    bodies = sum(len(committer.apply(request)) for request in rounds[name])
                wall = time.perf_counter() - wall
                cpu, db_after = committer.cpu() - cpu, committer.database_cpu()
                n = sum(e == "register" for request in rounds[name] for e, _ in request)
                out[name] = {
                    "registrations": n,
                    "bodies": bodies,
                    "cpu_us": cpu * 1e6 / n,
                    "wall_us": wall * 1e6 / n,
                    "db_cpu_us": None if db is None else (db_after - db) * 1e6 / n,
                    **({"instructions": figures["instructions"] / n} if figures else {}),
                }
        finally:
            committer.stop()
        if profile:
            spy.wait()
    return out


# --- the profile --------------------------------------------------------------------------------

# Our functions whose inclusive share of the committer's busy samples the profile reports.
PROFILED = (
    "round",
    "job_of",
    "frame",
    "apply_batch",
    "parse",
    "read_messages",
    "_new_rows",
    "_decide",
    "_write_raw",
    "_write_records",
    "_write_messages",
    "message_columns",
    "_write_activity",
    "write",
    "commit",
    "run_many",
)


def summarise(path: Path) -> dict:
    """Of the committer's samples inside a round: each of PROFILED's inclusive share, and the
    innermost frames with the most samples."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not n.isdigit() or not any(f.startswith("Committer.round ") for f in frames):
            continue
        total += int(n)
        names = {f.split(" (")[0].rpartition(".")[2] for f in frames}
        for name in PROFILED:
            inclusive[name] += int(n) * (name in names)
        own[re.sub(r":\d+\)$", ")", frames[-1])] += int(n)

    def share(counts, most=None):
        return {k: round(100 * v / max(1, total), 1) for k, v in counts.most_common(most)}

    return {"samples": total, "inclusive %": share(inclusive), "innermost %": share(own, 25)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--rounds", default=",".join(ROUNDS), help="of: " + ", ".join(ROUNDS))
    parser.add_argument("--other", type=Path, help="a checkout to compare with this one")
    parser.add_argument("--profile", action="store_true", help="py-spy on each checkout, once")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count each round's instructions per registration under callgrind (slow)",
    )
    args = parser.parse_args()
    load = os.getloadavg()
    trees = [("this checkout", ROOT)] + (
        [(str(args.other), args.other.resolve())] if args.other else []
    )
    results: dict = collections.defaultdict(list)
    counted: dict = {}
    for kind in args.db.split(","):
        for n, (label, root) in enumerate(trees if args.profile else []):
            path = DATA / f"register_cost_{kind}_{n}.txt"
            measure(kind, root, argparse.Namespace(**{**vars(args), "instructions": False}), path)
            print(json.dumps({"profile": f"{kind}, {label}", **summarise(path)}, indent=1))
        for r in range(args.repeat):
            for label, root in trees if r % 2 == 0 else trees[::-1]:
                log(f"{kind}, run {r + 1}: {label}")
                timed = argparse.Namespace(**{**vars(args), "instructions": False})
                for name, figures in measure(kind, root, timed).items():
                    results[(kind, label, name)].append(figures)
        for label, root in trees if args.instructions else []:
            log(f"{kind}, instructions: {label}")
            for name, figures in measure(kind, root, args).items():
                counted[(kind, label, name)] = figures["instructions"]
    print(
        f"load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
        f"{args.repeat} runs each, medians; {args.batches} requests of {args.size}"
    )
    if results:
        print(
            "| database | code | round | committer CPU µs per registration (runs) | "
            "registrations/s of one committer core | wall µs | database server CPU µs |"
        )
        print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for (kind, label, name), runs in results.items():
        cpu = statistics.median(r["cpu_us"] for r in runs)
        db_cpu = [r["db_cpu_us"] for r in runs if r["db_cpu_us"] is not None]
        each = ", ".join(f"{r['cpu_us']:.0f}" for r in runs)
        print(
            f"| {kind} | {label} | {name} | {cpu:.0f} ({each}) | {1e6 / cpu:,.0f} | "
            f"{statistics.median(r['wall_us'] for r in runs):.0f} | "
            f"{statistics.median(db_cpu) if db_cpu else 0:.0f} |"
        )
    if counted:
        print("\n| database | code | round | thousand instructions per registration |")
        print("| --- | --- | --- | ---: |")
        for (kind, label, name), n in counted.items():
            print(f"| {kind} | {label} | {name} | {n / 1000:,.0f} |")


if __name__ == "__main__":
    main()
