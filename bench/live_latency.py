"""Live latency: time from a webhook POST to the pushed row reaching open dashboards.

Each dashboard is a real WebSocket client of /ws (websocket-client) that says hello as
static/live.js does and parses every pushed frame with an HTML parser; an event counts as
arrived for a dashboard when a frame carrying its message row (`<tr id="msg-...">`) has
been parsed. Webhooks are posted one at a time over HTTP, a new message each, paced so
that every event is measured on its own. Servers run as subprocesses on a SQLite file:
the development server (`viberwatch run`) and the production command (gunicorn with
gunicorn.conf.py, its default workers), plus the production command with Redis for the
wake-up when a Redis server answers.

    python bench/live_latency.py [--events 200] [--dashboards 1 50] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from report import write_between  # noqa: E402

from support.live_client import META_RE, parse_push  # noqa: E402

BIN = Path(sys.executable).parent
USER, PASSWORD = "bench", "bench-password-123"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- live-latency:start -->", "<!-- live-latency:end -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_database(url: str, secret: str) -> None:
    from app import create_app
    from app.auth import users
    from app.records.models import db

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": secret})
    with app.app_context():
        db.create_all()
        users.create_user(USER, PASSWORD, "admin")
        db.engine.dispose()


def open_live_messages_page(browser, base: str):
    """A new tab signed in as the benchmark's user through the login form, on the messages
    page once its live socket is up."""
    page = browser.new_context(base_url=base).new_page()
    page.goto("/login")
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/login" not in u)
    page.goto("/")
    page.wait_for_selector("body[data-live-state=live]")
    return page


def start_server(kind: str, url: str, secret: str, port: int, redis: str | None):
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "VIBERWATCH_SECRET_KEY": secret,
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    env.pop("REDIS_URL", None)
    if redis:
        env["REDIS_URL"] = redis
    if kind == "dev":
        cmd = [str(BIN / "viberwatch"), "run", "--host", "127.0.0.1", "--port", str(port)]
    else:
        cmd = [
            str(BIN / "gunicorn"),
            "-c",
            "gunicorn.conf.py",
            "--access-logfile",
            os.devnull,
            "app:create_app()",
        ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/login", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{kind} server did not start")


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def login(base: str) -> str:
    with httpx.Client(base_url=base, timeout=10) as http:
        token = CSRF_RE.search(http.get("/login").text).group(1)
        r = http.post("/login", data={"username": USER, "password": PASSWORD, "csrf_token": token})
        assert r.status_code == 302, r.text
        return "; ".join(f"{k}={v}" for k, v in http.cookies.items())


class Dashboard(threading.Thread):
    """One open messages page: records when each message row arrives."""

    def __init__(self, base: str, cookie: str):
        super().__init__(daemon=True)
        self.ws = websocket.create_connection(
            base.replace("http://", "ws://") + "/ws", cookie=cookie, timeout=30
        )
        self.ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "cursor": None,
                    "page": "messages",
                    "filters": "",
                    "rows": [],
                    "feed": True,
                }
            )
        )
        self.pid = json.loads(META_RE.match(self.ws.recv()).group(1)).get("pid")
        self.arrived: dict[str, float] = {}
        self.pending: list[str] = []

    def run(self) -> None:
        try:
            while True:
                frame = self.ws.recv()
                now = time.perf_counter()
                # Rows travel in frames of their own, before the frame with the cursor,
                # counters and feed, which is left unparsed: in a browser each dashboard
                # has its own process, here they share one.
                if META_RE.match(frame):
                    continue
                for request_id, _ in parse_push(f'<!--live {{"cursor": 0}}-->{frame}').rows():
                    self.arrived.setdefault(request_id, now)
        except (websocket.WebSocketException, OSError):
            return


def measure(base: str, dashboards: int, events: int, pace: float) -> dict:
    cookie = login(base)
    boards = [Dashboard(base, cookie) for _ in range(dashboards)]
    for b in boards:
        b.start()
    sent: dict[str, float] = {}
    answered: list[float] = []
    with httpx.Client(base_url=base, timeout=30) as http:
        for _ in range(events):
            rid = uuid.uuid4().hex
            body = json.dumps(
                {
                    "status": "delivered",
                    "requestId": rid,
                    "code": 0,
                    "message": "ok",
                    "sendTime": "2023-07-13 15:12:11",
                }
            )
            sent[rid] = time.perf_counter()
            r = http.post(
                "/webhooks/viber/dr", content=body, headers={"Content-Type": "application/json"}
            )
            answered.append((time.perf_counter() - sent[rid]) * 1000)
            assert r.status_code == 200, r.text
            time.sleep(pace)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(len(b.arrived) < events for b in boards):
        time.sleep(0.05)
    latencies = [
        (b.arrived[rid] - t0) * 1000 for b in boards for rid, t0 in sent.items() if rid in b.arrived
    ]
    missing = dashboards * events - len(latencies)
    for b in boards:
        b.ws.close()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "p50": q[49],
        "p95": q[94],
        "max": max(latencies),
        "n": len(latencies),
        "missing": missing,
        "workers": len({b.pid for b in boards}),
        "post": statistics.median(answered),
    }


def redis_url() -> str | None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis

        return url if redis.Redis.from_url(url, socket_connect_timeout=1).ping() else None
    except Exception:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--dashboards", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between posts")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    servers = [
        ("development server (`viberwatch run`)", "dev", None),
        ("production command (gunicorn, default workers)", "prod", None),
    ]
    redis = redis_url()
    if redis:
        servers.append(("production command + `REDIS_URL`", "prod", redis))
    rows = []
    for label, kind, redis_for in servers:
        for n in args.dashboards:
            with tempfile.TemporaryDirectory() as tmp:
                url = "sqlite:///" + os.path.join(tmp, "bench.db")
                secret = uuid.uuid4().hex
                prepare_database(url, secret)
                proc, base = start_server(kind, url, secret, free_port(), redis_for)
                try:
                    r = measure(base, n, args.events, args.pace)
                finally:
                    stop_server(proc)
            rows.append((label, n, r))
            print(
                f"{label:50} {n:3} dashboards: p50 {r['p50']:6.1f} ms  p95 {r['p95']:6.1f} ms  "
                f"max {r['max']:6.1f} ms  ({r['n']} arrivals, {r['missing']} missing, "
                f"{r['workers']} worker(s))",
                flush=True,
            )
    table = [
        "| server | dashboards | p50 | p95 | max | webhook answered (p50) | arrivals (missing) | workers serving |",
        "| ------ | ---------: | --: | --: | --: | ---------------------: | -----------------: | --------------: |",
    ]
    for label, n, r in rows:
        table.append(
            f"| {label} | {n} | {r['p50']:.1f} ms | {r['p95']:.1f} ms | {r['max']:.1f} ms | "
            f"{r['post']:.1f} ms | {r['n']} ({r['missing']}) | {r['workers']} |"
        )
    text = "\n".join(table)
    print(text)
    if args.write_docs:
        stamp = (
            f"Measured {time.strftime('%Y-%m-%d')}, {args.events} events per row, "
            f"one every {args.pace * 1000:.0f} ms."
        )
        write_between(DOCS, START, END, f"{stamp}\n\n{text}")


if __name__ == "__main__":
    main()
