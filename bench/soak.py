"""Soak: minutes of webhooks at a fixed rate against the production server while its database
is locked, restarted and its ingest committer killed; then whether every body answered 200
is stored once, whether the record equals a rebuild and a recount, and how /healthz held up.

The run has a PostgreSQL cluster of its own (initdb into a temporary folder, a free port, trust
authentication; as the `postgres` user when run as root), so the restart and the locks touch
nothing else on the machine; it is stopped and removed at the end, also after a failure or
Ctrl-C. The server is the production command (`gunicorn -c gunicorn.conf.py
'app:create_app()'`) with 2 workers and its ingest committer, on a database built by
`viberwatch db upgrade`.

- Load: a process of its own posts a delivery receipt of a new message (a unique requestId)
  at a fixed arrival rate over up to `--connections` keep-alive connections, each request
  with a 30 s limit, and records every answer. A request waits for a free connection when all
  are busy; its time from its due moment is kept beside its time from being sent. HTTP/1.1 is
  spoken by h11 over asyncio streams: against a server that answers at once, httpx's pool took
  5.2 ms of CPU per request at 256 connections (1.6 ms at 8), more than two cores have at
  500/s; this takes 0.1 ms.
- Events, on a schedule scaled to the duration (at 10 minutes: a lock every 2 minutes, the
  restart at 45 %, the kill at 70 %): `LOCK TABLE raw_body IN ACCESS EXCLUSIVE MODE` held
  for 20 s from a connection of its own; PostgreSQL stopped (fast), 10 s later started
  again; SIGKILL of the ingest committer (the master starts another).
- Probes: GET /healthz, /static/app.css and /login, each from a thread of its own, four times
  a second, on a new connection each with a 5 s limit.
- Afterwards: /healthz polled until it says `ok` with nothing in the spool, the server
  stopped, then every requestId answered 200 looked up in raw_body, receipt and message, and
  `viberwatch rebuild --check` and `viberwatch recount --check` run.

Exit status 1 when a check fails. The server's and PostgreSQL's logs are kept in
bench/.data/soak/.

    python bench/soak.py [--minutes 10] [--rate 500] [--connections 256] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import multiprocessing
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import h11
import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from report import write_between  # noqa: E402

from support.servers import committer_pid  # noqa: E402

BIN = Path(sys.executable).parent
DOCS = ROOT / "docs" / "benchmarks.md"
KEEP = ROOT / "bench" / ".data" / "soak"
START, END = "<!-- soak:start -->", "<!-- soak:end -->"
REQUEST_TIMEOUT = 30.0
PROBE_TIMEOUT = 5.0
PROBE_INTERVAL = 0.25
PROBES = ("/healthz", "/static/app.css", "/login")
HEALTHZ_P99_LIMIT = 1.0
# A body the committer had committed but not answered when it was killed is applied again by
# its worker and stored as a duplicate (docs/spool.md, "What happens when something fails"); such a body was
# received at most a request's time limit before the kill, its copy shortly after.
KILL_WINDOW = REQUEST_TIMEOUT + 5
STATUSES = (
    ("success", 0, "Successfully sent."),
    ("delivered", 11001, "Viber message has delivered"),
    ("seen", 11002, "Viber message has seen"),
    ("failed", 11000, "Viber send error"),
    ("expired", 11003, "Viber message has expired"),
)
COST = {"currency": "USD", "localPrice": 0.012, "originalPrice": 0.012, "rateType": "Transactional"}


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


# --- a PostgreSQL cluster of the run's own ------------------------------------------------------


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl, postgres): pg_config's
    bindir, else where the initdb on PATH lives, else the newest of Debian's versioned
    folders (Debian keeps them off PATH)."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(out.stdout.strip()))
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    candidates += sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in candidates:
        if all((folder / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise SystemExit("PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found")


class Cluster:
    """initdb'd into `folder`, listening on a free port of 127.0.0.1 with its socket in
    `folder`, trust authentication; run as `postgres` when this process is root."""

    def __init__(self, folder: Path):
        self.folder = folder / "postgresql"
        self.data = self.folder / "data"
        self.log = self.folder / "postgresql.log"
        self.port = free_port()
        self.bin = postgres_bin()
        self.created = False

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        out = subprocess.run(
            as_user + [str(self.bin / args[0]), *args[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,  # Ctrl-C reaches this script only; it stops the cluster
        )
        if check and out.returncode:
            raise RuntimeError(f"{args[0]} failed: {out.stdout}{out.stderr}")
        return out

    def create(self) -> None:
        self.folder.mkdir(mode=0o700)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self.created = True
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def version(self) -> str:
        return self._run("postgres", "--version").stdout.strip()

    def url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        if self.created and self.data.exists() and self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)


# --- the server ---------------------------------------------------------------------------------


def viberwatch(env: dict, *args: str) -> subprocess.CompletedProcess:
    """A `viberwatch` command with the server's environment (database, secret, spool folder)."""
    return subprocess.run(
        [str(BIN / "viberwatch"), *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def start_server(env: dict, log_file) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**env, "HOST": "127.0.0.1", "PORT": str(port)}
    proc = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "--access-logfile",
            os.devnull,
            "app:create_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError("the server did not start (see its log)")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- load: a process of its own -----------------------------------------------------------------


def receipt_body(i: int, rid: str) -> bytes:
    status, code, message = STATUSES[i % len(STATUSES)]
    body = {
        "status": status,
        "requestId": rid,
        "code": code,
        "message": message,
        "sendTime": "2024-05-01 10:00:00",
    }
    if status == "success":
        body["cost"] = COST
    return json.dumps(body, separators=(",", ":")).encode()


class Connections:
    """Keep-alive HTTP/1.1 connections to the server, one request at a time each (h11 over
    asyncio streams). A connection idle for IDLE_REUSE seconds or more is closed rather than
    reused, so no request goes out on one the server is closing (gunicorn's keepalive is 5 s);
    a request that fails is recorded as failed, never sent again."""

    IDLE_REUSE = 3.0

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.idle: list = []  # (h11 connection, reader, writer, idle since), last used last

    async def post(self, target: str, headers: list, body: bytes) -> int:
        now = time.monotonic()
        conn = None
        while self.idle:
            *candidate, since = self.idle.pop()
            if now - since < self.IDLE_REUSE:
                conn = candidate
                break
            candidate[2].close()
        if conn is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            conn = [h11.Connection(h11.CLIENT), reader, writer]
        http, reader, writer = conn
        reusable = False
        try:
            writer.write(
                http.send(h11.Request(method="POST", target=target, headers=headers))
                + http.send(h11.Data(data=body))
                + http.send(h11.EndOfMessage())
            )
            status = None
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("closed by the server before its answer")
            if http.our_state is h11.DONE and http.their_state is h11.DONE:
                http.start_next_cycle()
                reusable = True
            return status
        finally:
            if reusable:
                self.idle.append((http, reader, writer, time.monotonic()))
            else:
                writer.close()


async def generate(
    host: str,
    port: int,
    token: str,
    rate: float,
    seconds: float,
    connections: int,
    t0: float,
    tag: str,
) -> dict:
    """Request i is due at t0 + i / rate; it is sent as soon as a connection is free (at most
    `connections` requests in flight)."""
    total = int(rate * seconds)
    records: list = [None] * total
    lateness = []  # how late the generator itself put each request on its way
    free = asyncio.Semaphore(connections)
    pool = Connections(host, port)
    target = f"/webhooks/viber/dr?token={token}"

    async def one(i: int, due: float) -> None:
        rid = f"soak{tag}{i:09d}"
        body = receipt_body(i, rid)
        headers = [
            ("Host", f"{host}:{port}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        async with free:
            sent = time.monotonic()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    answer = str(await pool.post(target, headers, body))
            except TimeoutError:
                answer = "timeout"
            except (OSError, EOFError, h11.ProtocolError) as exc:
                answer = type(exc).__name__
            done = time.monotonic()
        records[i] = (rid, i % len(STATUSES), due - t0, sent - t0, done - t0, answer)

    tasks = set()
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif i % 64 == 0:
            await asyncio.sleep(0)
        lateness.append(max(0.0, -delay))
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*list(tasks))
    for _, _, writer, _ in pool.idle:
        writer.close()
    return {"records": records, "late": lateness, "total": total}


def load_process(args: tuple, out_path: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops this process
    result = asyncio.run(generate(*args))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    late = result["late"]
    with open(out_path, "w") as out:
        json.dump(
            {
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "late_over_50ms": sum(v > 0.05 for v in late),
                "late_p99": percentile(late, 99) if late else 0.0,
                "late_max": max(late) if late else 0.0,
            },
            out,
        )
        out.write("\n")
        for rec in result["records"]:
            if rec is not None:
                out.write("\t".join(str(v) for v in rec) + "\n")


def read_load(path: Path) -> tuple[dict, list[tuple]]:
    with open(path) as f:
        meta = json.loads(f.readline())
        records = []
        for line in f:
            rid, kind, due, sent, done, answer = line.rstrip("\n").split("\t")
            records.append((rid, int(kind), float(due), float(sent), float(done), answer))
    return meta, records


# --- events and probes (threads of this process) ------------------------------------------------


class Timeline:
    def __init__(self, t0: float):
        self.t0 = t0
        self.entries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str, at: float | None = None) -> None:
        at = self.now() if at is None else at
        with self._lock:
            self.entries.append((at, text))
        log(f"[{at:7.1f} s] {text}")


def schedule(seconds: float) -> list[tuple[float, str]]:
    """Locks at every fifth of the run (every 2 minutes at 10), the restart at 45 %, the
    committer's kill at 70 %."""
    every = seconds / 5
    events = [(every * k, "lock") for k in range(1, 5)]
    events += [(seconds * 0.45, "restart"), (seconds * 0.70, "kill")]
    return sorted(events)


def lock_seconds(seconds: float) -> float:
    return min(20.0, seconds / 30)


def outage_seconds(seconds: float) -> float:
    return min(10.0, seconds / 12)


def hold_lock(url: str, seconds: float, timeline: Timeline) -> dict:
    asked = timeline.now()
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("LOCK TABLE raw_body IN ACCESS EXCLUSIVE MODE")
            got = timeline.now()
            conn.execute("SELECT pg_sleep(%s)", (seconds,))
        released = timeline.now()
    except psycopg.Error as exc:
        timeline.note(f"lock on raw_body failed: {exc}".strip())
        return {"kind": "lock", "asked": asked, "error": str(exc)}
    timeline.note(
        f"lock on raw_body (ACCESS EXCLUSIVE): asked at {asked:.1f} s, held "
        f"{got:.1f}-{released:.1f} s",
        at=asked,
    )
    return {"kind": "lock", "asked": asked, "from": got, "to": released}


def restart(cluster: Cluster, outage: float, timeline: Timeline) -> dict:
    began = timeline.now()
    cluster.stop("fast")
    stopped = timeline.now()
    time.sleep(outage)
    starting = timeline.now()
    cluster.start()
    ready = timeline.now()
    timeline.note(
        f"PostgreSQL restart: stop (fast) {began:.1f}-{stopped:.1f} s, down until "
        f"{starting:.1f} s, accepting connections at {ready:.1f} s",
        at=began,
    )
    return {"kind": "restart", "from": began, "stopped": stopped, "to": ready}


def kill_committer(master: int, timeline: Timeline) -> dict:
    at = timeline.now()
    victim = committer_pid(master)
    if victim is None:
        timeline.note("committer kill: no committer running")
        return {"kind": "kill", "at": at, "error": "no committer"}
    wall = datetime.now(UTC)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    again = None
    while time.monotonic() < deadline:
        again = committer_pid(master)
        if again not in (None, victim):
            break
        again = None
        time.sleep(0.1)
    back = timeline.now()
    timeline.note(
        f"SIGKILL of the ingest committer (pid {victim}); "
        + (
            f"the master started pid {again} at {back:.1f} s"
            if again
            else "no new committer within 60 s"
        ),
        at=at,
    )
    return {"kind": "kill", "at": at, "wall": wall.isoformat(), "pid": victim, "new_pid": again}


def run_events(
    plan: list[tuple[float, str]],
    seconds: float,
    url: str,
    cluster: Cluster,
    master: int,
    timeline: Timeline,
    stop: threading.Event,
    done: list,
) -> None:
    threads = []
    for at, kind in plan:
        if stop.wait(max(0.0, at - timeline.now())):
            break
        if kind == "lock":
            target, args = hold_lock, (url, lock_seconds(seconds), timeline)
        elif kind == "restart":
            target, args = restart, (cluster, outage_seconds(seconds), timeline)
        else:
            target, args = kill_committer, (master, timeline)

        def call(target=target, args=args):
            try:
                done.append(target(*args))
            except Exception as exc:  # noqa: BLE001 - a failed event is reported, not fatal
                timeline.note(f"{target.__name__} failed: {exc}")
                done.append({"kind": target.__name__, "error": str(exc)})

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


def probe(base: str, path: str, t0: float, stop: threading.Event, out: list) -> None:
    """GET `path` every PROBE_INTERVAL on a new connection: (at, seconds, answer, health),
    health being /healthz's status and spool (bodies, oldest seconds)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base, timeout=PROBE_TIMEOUT, limits=limits) as client:
        next_at = time.monotonic()
        while not stop.is_set():
            began = time.monotonic()
            health = None
            try:
                r = client.get(path)
                answer = str(r.status_code)
                if path == "/healthz":
                    try:
                        said = r.json()
                        waiting = said.get("spool") or {}
                        health = (
                            said.get("status"),
                            waiting.get("bodies"),
                            waiting.get("oldest_seconds"),
                        )
                    except (ValueError, AttributeError):
                        health = ("not JSON", None, None)
            except httpx.TimeoutException:
                answer = "timeout"
            except httpx.HTTPError as exc:
                answer = type(exc).__name__
            out.append((began - t0, time.monotonic() - began, answer, health))
            next_at = max(next_at + PROBE_INTERVAL, time.monotonic())
            stop.wait(max(0.0, next_at - time.monotonic()))


def wait_drained(base: str, limit: float) -> tuple[bool, float, dict | None]:
    """Poll /healthz until three answers in a row say ok with no body in the spool."""
    began = time.monotonic()
    last, ok_in_a_row = None, 0
    while time.monotonic() - began < limit:
        try:
            r = httpx.get(base + "/healthz", timeout=PROBE_TIMEOUT)
            last = r.json()
            if last.get("status") == "ok" and not last.get("spool", {}).get("bodies"):
                ok_in_a_row += 1
                if ok_in_a_row >= 3:
                    return True, time.monotonic() - began, last
            else:
                ok_in_a_row = 0
        except (httpx.HTTPError, ValueError):
            ok_in_a_row = 0
        time.sleep(1)
    return False, time.monotonic() - began, last


# --- checks -------------------------------------------------------------------------------------


def stored_state(url: str) -> dict:
    with psycopg.connect(url) as conn:
        raw = conn.execute(
            "SELECT request_id, outcome, http_status, spooled IS NOT NULL, received_at "
            "FROM raw_body WHERE endpoint = 'dr'"
        ).fetchall()
        receipts = conn.execute(
            "SELECT request_id, COUNT(*), SUM(times_received) FROM receipt GROUP BY request_id"
        ).fetchall()
        messages = conn.execute("SELECT request_id, status, receipts_count FROM message").fetchall()
        tally = conn.execute("SELECT status, SUM(n) FROM message_tally GROUP BY status").fetchall()
    return {"raw": raw, "receipts": receipts, "messages": messages, "tally": tally}


def check_records(records: list[tuple], state: dict, kill_walls: list[datetime]) -> dict:
    sent_status = {rid: STATUSES[kind][0] for rid, kind, *_ in records}
    answered_200 = {rec[0] for rec in records if rec[5] == "200"}
    raw_by_rid: dict[str, Counter] = defaultdict(Counter)
    spooled = 0
    duplicates_near_kill, duplicates_elsewhere = [], []
    for rid, outcome, _status, from_spool, received_at in state["raw"]:
        raw_by_rid[rid][outcome] += 1
        spooled += bool(from_spool)
        if outcome == "duplicate":
            near = any(abs((received_at - k).total_seconds()) <= KILL_WINDOW for k in kill_walls)
            (duplicates_near_kill if near else duplicates_elsewhere).append(rid)
    receipts = {rid: (n, times) for rid, n, times in state["receipts"]}
    messages = {rid: (status, count) for rid, status, count in state["messages"]}

    missing = sorted(rid for rid in answered_200 if raw_by_rid[rid]["accepted"] == 0)
    no_receipt = sorted(rid for rid in answered_200 if rid not in receipts)
    no_message = sorted(rid for rid in answered_200 if rid not in messages)
    accepted_twice = sorted(rid for rid, c in raw_by_rid.items() if c["accepted"] > 1)
    receipt_rows_twice = sorted(rid for rid, (n, _) in receipts.items() if n > 1)
    counted_twice = sorted(rid for rid, (_, count) in messages.items() if count != 1)
    wrong_status = sorted(
        rid
        for rid, (status, _) in messages.items()
        if rid in sent_status and status != sent_status[rid]
    )
    repeats = sorted(rid for rid, (_, times) in receipts.items() if times and times > 1)
    not_200_stored = sum(
        1 for rec in records if rec[5] != "200" and raw_by_rid[rec[0]]["accepted"] > 0
    )
    unknown = sorted(set(raw_by_rid) - set(sent_status))
    other_outcomes = Counter(
        outcome
        for c in raw_by_rid.values()
        for outcome in c.elements()
        if outcome not in ("accepted", "duplicate")
    )
    tally_total = sum(n for _, n in state["tally"])
    return {
        "answered_200": len(answered_200),
        "missing": missing,
        "no_receipt": no_receipt,
        "no_message": no_message,
        "accepted_twice": accepted_twice,
        "receipt_rows_twice": receipt_rows_twice,
        "counted_twice": counted_twice,
        "wrong_status": wrong_status,
        "duplicates_near_kill": duplicates_near_kill,
        "duplicates_elsewhere": duplicates_elsewhere,
        "times_received_over_1": repeats,
        "not_200_but_stored": not_200_stored,
        "unknown_request_ids": unknown,
        "other_outcomes": dict(other_outcomes),
        "raw_bodies": len(state["raw"]),
        "spooled_bodies": spooled,
        "messages": len(messages),
        "tally_total": tally_total,
    }


def spool_left(env: dict) -> tuple[int | None, list[str]]:
    """Bodies the spool files still hold, by `viberwatch spool status` (None: not readable)."""
    out = viberwatch(env, "spool", "status")
    lines = [line.split(" spool file(s) in ")[0] for line in out.stdout.strip().splitlines()]
    found = re.match(r"(\d+) bodies waiting", lines[-1]) if lines else None
    if out.returncode or not found:
        return None, lines + out.stderr.strip().splitlines()[-3:]
    return int(found.group(1)), lines


def last_line(out: subprocess.CompletedProcess) -> str:
    text = (out.stdout or "").strip() or (out.stderr or "").strip()
    return text.splitlines()[-1] if text else f"exit status {out.returncode}"


SERVER_LOG_MARKS = {
    "tracebacks": "Traceback",
    "ERROR lines": " ERROR ",
    "CRITICAL lines": "CRITICAL",
    "worker timeouts": "WORKER TIMEOUT",
    "committer restarts": "ingest committer ended",
    "spool started": "event=spool_started",
    "spool drained": "event=spool_drained",
    "spool failed": "event=spool_failed",
    "answered 503": "status=503",
}


def scan_log(path: Path) -> dict:
    counts = Counter()
    firsts: dict[str, str] = {}
    with open(path, errors="replace") as f:
        for line in f:
            for name, mark in SERVER_LOG_MARKS.items():
                if mark in line:
                    counts[name] += 1
                    firsts.setdefault(name, line.strip()[:300])
    return {"counts": {k: counts[k] for k in SERVER_LOG_MARKS}, "first": firsts}


def stats(values: list[float]) -> dict:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:,.0f}"


def probe_summary(samples: list[tuple]) -> dict:
    # A probe without an answer counts as PROBE_TIMEOUT (at least) in the percentiles.
    times = [t if answer == "200" else max(t, PROBE_TIMEOUT) for _, t, answer, _ in samples]
    return {
        "probes": len(samples),
        "failed": dict(Counter(a for _, _, a, _ in samples if a != "200")),
        **stats(times),
        "over_1s": sum(t >= 1.0 for t in times),
    }


def answer_spans(records: list[tuple], gap: float = 5.0) -> list[tuple[float, float, str, int]]:
    """Stretches of webhooks answered other than 200, by the time they were sent: (from, to,
    answer, how many); a pause of `gap` seconds starts a new stretch."""
    spans: dict[str, list] = defaultdict(list)
    for _, _, _, sent, _, answer in sorted(records, key=lambda rec: rec[3]):
        if answer == "200":
            continue
        runs = spans[answer]
        if runs and sent - runs[-1][1] <= gap:
            runs[-1][1], runs[-1][2] = sent, runs[-1][2] + 1
        else:
            runs.append([sent, sent, 1])
    return sorted((a, b, answer, n) for answer, runs in spans.items() for a, b, n in runs)


def health_spans(samples: list[tuple]) -> list[tuple[float, float, str, int, float]]:
    """Stretches of /healthz answers other than ok: (from, to, what, most bodies the spool
    held, its oldest body's greatest age in seconds)."""
    spans: list[list] = []
    for at, _, answer, health in sorted(samples, key=lambda sample: sample[0]):
        status, bodies, oldest = health or (None, None, None)
        what = status if answer == "200" else answer
        if what == "ok":
            continue
        if spans and spans[-1][2] == what and at - spans[-1][1] <= PROBE_INTERVAL * 4 + 1:
            spans[-1][1] = at
        else:
            spans.append([at, at, what, 0, 0.0])
        spans[-1][3] = max(spans[-1][3], bodies or 0)
        spans[-1][4] = max(spans[-1][4], oldest or 0.0)
    return [tuple(span) for span in spans]


def windows(records: list[tuple], samples: list[tuple], seconds: float, step: float) -> list[dict]:
    """Per `step` seconds of the run: webhooks due, answered 200 (by when answered), their
    latency from the due moment, the slowest /healthz probe, and the least and most bodies
    /healthz said were waiting in the spool."""
    count = max(1, int(-(-seconds // step)))
    out = [
        {"from": i * step, "due": 0, "ok": 0, "late": [], "healthz": 0.0, "spool": []}
        for i in range(count)
    ]

    def at(t: float) -> dict:
        return out[min(count - 1, max(0, int(t // step)))]

    for _, _, due, _, done, answer in records:
        at(due)["due"] += 1
        if answer == "200":
            at(done)["ok"] += 1
            at(due)["late"].append(done - due)
    for began, took, answer, health in samples:
        w = at(began)
        w["healthz"] = max(w["healthz"], took if answer == "200" else max(took, PROBE_TIMEOUT))
        if health and health[1] is not None:
            w["spool"].append(health[1])
    for w in out:
        late = w.pop("late")
        w["p50"], w["p99"] = percentile(late, 50), percentile(late, 99)
        waiting = w.pop("spool")
        w["spool_least"], w["spool_most"] = min(waiting, default=0), max(waiting, default=0)
    return out


# --- the run ------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, work: Path, cluster: Cluster) -> dict:
    seconds = args.minutes * 60
    KEEP.mkdir(parents=True, exist_ok=True)
    server_log_path = KEEP / "server.log"
    log(f"PostgreSQL cluster of this run: {cluster.version()}, port {cluster.port}")
    cluster.create()
    cluster.start()
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
        conn.execute("CREATE DATABASE viberwatch")
    url = cluster.url("viberwatch")
    token = uuid.uuid4().hex
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "VIBERWATCH_SECRET_KEY": uuid.uuid4().hex,
        "VIBERWATCH_WEBHOOK_TOKEN": token,
        "WEB_CONCURRENCY": "2",
        "VIBERWATCH_SPOOL_FOLDER": str(work / "spool"),
    }
    for name in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "VIBERWATCH_BENCH_NOOP"):
        env.pop(name, None)
    migrated = viberwatch(env, "db", "upgrade")
    if migrated.returncode:
        raise RuntimeError("viberwatch db upgrade failed: " + migrated.stderr[-2000:])

    result: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "load_before": os.getloadavg(),
        "minutes": args.minutes,
        "rate": args.rate,
        "connections": args.connections,
        "postgresql": cluster.version(),
        "lock_seconds": lock_seconds(seconds),
        "outage_seconds": outage_seconds(seconds),
    }
    with open(server_log_path, "wb") as server_log:
        proc, base = start_server(env, server_log)
        try:
            result.update(run_load(args, base, token, url, cluster, proc.pid, work, seconds))
        finally:
            stop_server(proc)
    if not cluster.running():  # a restart that failed: the record is read all the same
        cluster.start()
    # What the spool files still hold once the server has stopped (`viberwatch spool status`).
    result["spool_bodies_left"], result["spool_status"] = spool_left(env)

    log("checking the record")
    state = stored_state(url)
    records = result.pop("_records")
    kill_walls = [
        datetime.fromisoformat(e["wall"]).replace(tzinfo=None)
        for e in result["events"]
        if e.get("kind") == "kill" and e.get("wall")
    ]
    result["record"] = check_records(records, state, kill_walls)
    log("viberwatch rebuild --check, recount --check")
    result["rebuild"] = last_line(viberwatch(env, "rebuild", "--check"))
    result["recount"] = last_line(viberwatch(env, "recount", "--check"))
    result["server_log"] = scan_log(server_log_path)
    result["load_after"] = os.getloadavg()
    return result


def run_load(
    args: argparse.Namespace,
    base: str,
    token: str,
    url: str,
    cluster: Cluster,
    master: int,
    work: Path,
    seconds: float,
) -> dict:
    t0 = time.monotonic() + 3  # the load process's start-up
    timeline = Timeline(t0)
    tag = uuid.uuid4().hex[:6]
    host, port = base.removeprefix("http://").split(":")
    port = int(port)
    load_out = work / "load.tsv"
    spawn = multiprocessing.get_context("spawn")
    loader = spawn.Process(
        target=load_process,
        args=(
            (host, port, token, args.rate, seconds, args.connections, t0, tag),
            str(load_out),
        ),
    )
    loader.start()
    stop = threading.Event()
    samples: dict[str, list] = {path: [] for path in PROBES}
    probers = [
        threading.Thread(target=probe, args=(base, path, t0, stop, samples[path]), daemon=True)
        for path in PROBES
    ]
    for t in probers:
        t.start()
    events: list = []
    plan = schedule(seconds)
    eventer = threading.Thread(
        target=run_events,
        args=(plan, seconds, url, cluster, master, timeline, stop, events),
        daemon=True,
    )
    eventer.start()
    try:
        while loader.is_alive():
            loader.join(30)
            if loader.is_alive():
                log(f"[{timeline.now():7.1f} s] load running")
        eventer.join()
        load_end = timeline.now()
        timeline.note("load finished; waiting for /healthz to say ok with an empty spool")
        drained, drain_seconds, last_health = wait_drained(base, args.drain_timeout)
        timeline.note(
            f"/healthz ok with an empty spool after {drain_seconds:.0f} s"
            if drained
            else f"/healthz not ok with an empty spool after {drain_seconds:.0f} s: {last_health}"
        )
    finally:
        stop.set()
        for t in probers:
            t.join(PROBE_TIMEOUT + 2)
        if loader.is_alive():
            loader.terminate()
            loader.join(10)
    if loader.exitcode != 0:
        raise RuntimeError(f"the load process failed (exit status {loader.exitcode})")
    meta, records = read_load(load_out)
    shutil.copyfile(load_out, KEEP / "load.tsv")
    answers = Counter(rec[5] for rec in records)
    answered = [rec for rec in records if rec[5] not in ("timeout",) and rec[5][0].isdigit()]
    from_sent = [rec[4] - rec[3] for rec in answered]
    from_due = [rec[4] - rec[2] for rec in answered]
    last_sent = max((rec[3] for rec in records), default=0.0)
    for a, b, what, bodies, oldest in health_spans(samples["/healthz"]):
        timeline.note(
            f"/healthz answered {what} from {a:.1f} to {b:.1f} s (spool: at most {bodies:,} "
            f"bodies waiting, the oldest {oldest:.0f} s)",
            at=a,
        )
    for a, b, answer, n in answer_spans(records):
        timeline.note(f"webhooks answered {answer}: {n:,}, sent from {a:.1f} to {b:.1f} s", at=a)
    return {
        "_records": records,
        "requests": len(records),
        "planned": int(args.rate * seconds),
        "answers": dict(answers),
        "rate_achieved": len(records) / max(last_sent, 1e-9),
        "last_sent": last_sent,
        "ok_rate": answers.get("200", 0) / max(load_end, 1e-9),
        "latency_sent": stats(from_sent),
        "latency_due": stats(from_due),
        "over_2s": sum(t > 2 for t in from_sent),
        "generator": meta,
        "probes": {path: probe_summary(samples[path]) for path in PROBES},
        "windows": windows(records, samples["/healthz"], seconds, max(10.0, seconds / 10)),
        "probe_samples": samples,
        "events": events,
        "timeline": sorted(timeline.entries),
        "drained": drained,
        "drain_seconds": drain_seconds,
        "last_health": last_health,
        "schedule": plan,
    }


# --- report -------------------------------------------------------------------------------------


def verdicts(r: dict) -> list[tuple[str, bool, str]]:
    rec = r["record"]
    healthz = r["probes"]["/healthz"]
    left = "unknown" if r["spool_bodies_left"] is None else r["spool_bodies_left"]
    twice = (
        len(rec["accepted_twice"])
        + len(rec["receipt_rows_twice"])
        + len(rec["counted_twice"])
        + len(rec["wrong_status"])
    )
    failed_events = [
        e for e in r["events"] if e.get("error") or (e.get("kind") == "kill" and not e["new_pid"])
    ]
    kinds = Counter(kind for _, kind in r["schedule"])
    return [
        (
            "the events took place",
            len(r["events"]) == len(r["schedule"]) and not failed_events,
            f"{kinds['lock']} locks, {kinds['restart']} restart, {kinds['kill']} committer kill "
            f"planned; {len(r['events'])} done, {len(failed_events)} of them failed",
        ),
        (
            "the spool drained (/healthz ok, no body waiting) after the load",
            r["drained"] and r["spool_bodies_left"] == 0,
            f"{'after' if r['drained'] else 'not within'} {r['drain_seconds']:.0f} s; bodies "
            f"left in the spool files: {left}",
        ),
        (
            "nothing answered 200 is missing",
            not (rec["missing"] or rec["no_receipt"] or rec["no_message"]),
            f"{rec['answered_200']:,} answered 200; without an accepted raw body "
            f"{len(rec['missing'])}, without a receipt {len(rec['no_receipt'])}, without a "
            f"message {len(rec['no_message'])}",
        ),
        (
            "nothing applied twice",
            twice == 0
            and not rec["duplicates_elsewhere"]
            and r["rebuild"] == "no differences"
            and r["recount"] == "no differences",
            f"accepted twice {len(rec['accepted_twice'])}, two receipt rows "
            f"{len(rec['receipt_rows_twice'])}, message receipts_count not 1 "
            f"{len(rec['counted_twice'])}, status not the one sent {len(rec['wrong_status'])}; "
            f"duplicates away from the committer kill {len(rec['duplicates_elsewhere'])}; "
            f"rebuild: {r['rebuild']}; recount: {r['recount']}",
        ),
        (
            f"/healthz p99 under {HEALTHZ_P99_LIMIT:g} s",
            healthz["p99"] is not None and healthz["p99"] < HEALTHZ_P99_LIMIT,
            f"p99 {ms(healthz['p99'])} ms, max {ms(healthz['max'])} ms, "
            f"{healthz['over_1s']} of {healthz['probes']:,} at 1 s or more, failed "
            f"{sum(healthz['failed'].values())}",
        ),
    ]


def answers_text(answers: dict) -> str:
    order = sorted(answers, key=lambda a: (not a[0].isdigit(), a))
    return ", ".join(f"{a}: {answers[a]:,}" for a in order)


def markdown(r: dict) -> str:
    rec = r["record"]
    gen = r["generator"]
    lines = [
        f"Measured {r['date']} ({r['cores']} cores, {r['memory_gib']} GiB; load average "
        f"{r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after): {r['minutes']:g} "
        f"minutes at {r['rate']:g} webhooks/s over up to {r['connections']} connections, "
        f"gunicorn with 2 workers and the ingest committer, {r['postgresql']}.",
        "",
        "| time | event |",
        "| ---: | --- |",
    ]
    for at, text in r["timeline"]:
        lines.append(f"| {at:,.1f} s | {text} |")
    lines += [
        "",
        "| check | met | measured |",
        "| --- | --- | --- |",
    ]
    for name, ok, detail in verdicts(r):
        lines.append(f"| {name} | {'yes' if ok else '**no**'} | {detail} |")
    ls, ld = r["latency_sent"], r["latency_due"]
    lines += [
        "",
        "| webhooks | |",
        "| --- | --- |",
        f"| sent (planned) | {r['requests']:,} ({r['planned']:,}) |",
        f"| answers | {answers_text(r['answers'])} |",
        f"| rate sent (the last request sent at {r['last_sent']:,.0f} s) / answered 200 | "
        f"{r['rate_achieved']:,.0f}/s / {r['ok_rate']:,.0f}/s |",
        f"| latency from sending, p50 / p99 / max | {ms(ls['p50'])} / {ms(ls['p99'])} / "
        f"{ms(ls['max'])} ms ({r['over_2s']:,} over 2 s) |",
        f"| latency from the due moment (includes waiting for a connection) | {ms(ld['p50'])} / "
        f"{ms(ld['p99'])} / {ms(ld['max'])} ms |",
        f"| load generator | {gen['cpu_seconds']:.0f} s of CPU; behind its schedule by more than "
        f"50 ms {gen['late_over_50ms']:,} times (p99 {ms(gen['late_p99'])} ms, max "
        f"{ms(gen['late_max'])} ms) |",
        f"| raw bodies stored (from the spool) | {rec['raw_bodies']:,} "
        f"({rec['spooled_bodies']:,}) |",
        f"| not answered 200 but stored | {rec['not_200_but_stored']:,} |",
        f"| duplicates near the committer kill (expected, docs/spool.md) | "
        f"{len(rec['duplicates_near_kill'])} |",
        f"| receipts received more than once | {len(rec['times_received_over_1'])} |",
        "",
        "| probe | probes | p50 ms | p99 ms | max ms | 1 s or more | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for path, p in r["probes"].items():
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(p["failed"].items())) or "0"
        lines.append(
            f"| GET {path} | {p['probes']:,} | {ms(p['p50'])} | {ms(p['p99'])} | {ms(p['max'])} "
            f"| {p['over_1s']} | {failed} |"
        )
    lines += [
        "",
        "| from | webhooks due | answered 200 | latency from due p50 / p99 ms | slowest "
        "/healthz ms | bodies in the spool (least, most) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in r["windows"]:
        lines.append(
            f"| {w['from']:,.0f} s | {w['due']:,} | {w['ok']:,} | {ms(w['p50'])} / "
            f"{ms(w['p99'])} | {ms(w['healthz'])} | {w['spool_least']:,}, {w['spool_most']:,} |"
        )
    counts = r["server_log"]["counts"]
    lines += [
        "",
        "Server log: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0, help="webhooks per second")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds to wait for the spool"
    )
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    work = Path(tempfile.mkdtemp(prefix="viberwatch-soak-"))
    work.chmod(0o711)  # the cluster's folder inside belongs to postgres
    cluster = Cluster(work)
    try:
        result = soak(args, work, cluster)
    except KeyboardInterrupt:
        log("interrupted: stopping the server, removing the cluster of this run")
        raise SystemExit(130) from None
    finally:
        cluster.destroy()
        if cluster.log.exists():
            KEEP.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cluster.log, KEEP / "postgresql.log")
        shutil.rmtree(work, ignore_errors=True)

    text = markdown(result)
    print(text)
    (KEEP / "results.json").write_text(json.dumps(result, indent=1, default=str))
    failed = [name for name, ok, _ in verdicts(result) if not ok]
    if any(result["server_log"]["counts"][k] for k in ("tracebacks", "CRITICAL lines")):
        log("first lines of note in the server log:")
        for name, line in result["server_log"]["first"].items():
            log(f"  {name}: {line}")
    log(f"logs: {KEEP / 'server.log'}, {KEEP / 'postgresql.log'}")
    if args.write_docs:
        write_between(DOCS, START, END, text)
    if failed:
        log("FAILED: " + "; ".join(failed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
