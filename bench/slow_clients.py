"""Slow clients: with many connections that send a request one byte every few seconds open,
do /healthz and a webhook still answer?

The production command (`gunicorn -c gunicorn.conf.py 'app:create_app()'`, its default
workers and threads) runs twice on a fresh SQLite file: once with gunicorn's own gthread
worker (`--worker-class gthread`, the baseline) and once as configured (SlowClientWorker,
app/server/worker.py). Against each, N attackers open connections and send a webhook request's
head one byte every few seconds, reconnecting whenever the server closes on them, so N stay
open; meanwhile a probe, in a process of its own, asks GET /healthz and POSTs a delivery
receipt, one after the other, every half second, each on a new connection with a 10 s
timeout, and records how long each took (or that it timed out).

    python bench/slow_clients.py [--connections 1500] [--interval 4] [--hold 60] [--write-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from live_latency import free_port, prepare_database, stop_server  # noqa: E402
from report import write_between  # noqa: E402

BIN = Path(sys.executable).parent
DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- slow-clients:start -->", "<!-- slow-clients:end -->"
PROBE_TIMEOUT = 10.0
SLOW_HEAD = (
    b"POST /webhooks/viber/dr HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    + b"X-Slow: "
    + b"a" * 4000
)


def start_server(
    url: str, secret: str, port: int, worker_class: str | None, log
) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "VIBERWATCH_SECRET_KEY": secret,
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    env.pop("REDIS_URL", None)
    cmd = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--access-logfile", os.devnull]
    if worker_class:
        cmd += ["--worker-class", worker_class]
    proc = subprocess.Popen(
        cmd + ["app:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not start")


class Attack:
    """N connections, each sending SLOW_HEAD one byte per `interval`; reconnects on close."""

    def __init__(self, port: int, connections: int, interval: float):
        self.port, self.connections, self.interval = port, connections, interval
        self.open = 0
        self.reconnects = 0
        self.cut_off = 0  # closed by the server (408 or EOF)
        self.stopping = False

    async def one(self, index: int) -> None:
        await asyncio.sleep(index * 0.002)  # do not open them all in the same instant
        first = True
        while not self.stopping:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            if not first:
                self.reconnects += 1
            first = False
            self.open += 1
            try:
                for i in range(len(SLOW_HEAD)):
                    if self.stopping:
                        break
                    writer.write(SLOW_HEAD[i : i + 1])
                    await writer.drain()
                    try:
                        await asyncio.wait_for(reader.read(1024), self.interval)
                    except TimeoutError:
                        continue
                    # The server answered (408) or closed: this connection is over.
                    self.cut_off += 1
                    break
            except OSError:
                self.cut_off += 1
            finally:
                self.open -= 1
                writer.close()

    async def run(self) -> list:
        return [asyncio.create_task(self.one(i)) for i in range(self.connections)]


def probe(port: int, request: bytes) -> float | None:
    """Seconds to a `200` status line on a new connection, or None (timeout, other answer)."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as s:
            s.sendall(request)
            line = s.makefile("rb").readline()
    except OSError:
        return None
    if not line.startswith(b"HTTP/1.1 200"):
        return None
    return time.monotonic() - started


def receipt_request() -> bytes:
    body = json.dumps(
        {
            "status": "delivered",
            "requestId": uuid.uuid4().hex,
            "code": 0,
            "message": "ok",
            "sendTime": "2023-07-13 15:12:11",
        }
    ).encode()
    return (
        b"POST /webhooks/viber/dr HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def probe_for(port: int, hold: float, out) -> None:
    """In a process of its own, so that the attackers' event loop cannot delay the probes:
    a /healthz then a webhook every half second for `hold` seconds."""
    samples = {"healthz": [], "webhook": []}
    end = time.monotonic() + hold
    while time.monotonic() < end:
        samples["healthz"].append(probe(port, HEALTHZ))
        samples["webhook"].append(probe(port, receipt_request()))
        time.sleep(0.5)
    out.send(samples)


async def measure(port: int, connections: int, interval: float, hold: float) -> dict:
    attack = Attack(port, connections, interval)
    tasks = await attack.run()
    ramp_deadline = time.monotonic() + 30
    while attack.open < connections * 0.98 and time.monotonic() < ramp_deadline:
        await asyncio.sleep(0.2)
    spawn = multiprocessing.get_context("spawn")
    receiver, sender = spawn.Pipe(duplex=False)
    prober = spawn.Process(target=probe_for, args=(port, hold, sender))
    prober.start()
    open_counts = []
    while prober.is_alive() and not receiver.poll():
        open_counts.append(attack.open)
        await asyncio.sleep(0.5)
    samples = receiver.recv()
    prober.join()
    attack.stopping = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out = {
        "open_min": min(open_counts),
        "open_median": statistics.median(open_counts),
        "reconnects": attack.reconnects,
    }
    for name, values in samples.items():
        answered = sorted(v for v in values if v is not None)
        out[name] = {
            "probes": len(values),
            "timeouts": len(values) - len(answered),
            "p50": statistics.median(answered) * 1000 if answered else None,
            "max": answered[-1] * 1000 if answered else None,
            "under_1s": sum(v < 1.0 for v in answered),
        }
    return out


def cell(r: dict) -> str:
    if r["p50"] is None:
        return f"no answer ({r['timeouts']} of {r['probes']} timed out)"
    return (
        f"{r['under_1s']}/{r['probes']} under 1 s; p50 {r['p50']:.0f} ms, max {r['max']:.0f} ms; "
        f"{r['timeouts']} timed out"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1500)
    parser.add_argument(
        "--interval", type=float, default=4.0, help="seconds between an attacker's bytes"
    )
    parser.add_argument("--hold", type=float, default=60.0, help="seconds of probing under attack")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 + 256)), hard)
    )

    rows = []
    for label, worker_class in (
        ("gunicorn's gthread worker (before)", "gthread"),
        ("SlowClientWorker, as gunicorn.conf.py runs it", None),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            url = "sqlite:///" + os.path.join(tmp, "bench.db")
            secret = uuid.uuid4().hex
            prepare_database(url, secret)
            port = free_port()
            with open(os.path.join(tmp, "gunicorn.log"), "wb") as log:
                proc = start_server(url, secret, port, worker_class, log)
                try:
                    r = asyncio.run(measure(port, args.connections, args.interval, args.hold))
                finally:
                    stop_server(proc)
        rows.append((label, r))
        print(
            f"{label}: slow connections open {r['open_median']:.0f} (min {r['open_min']}), "
            f"reconnects {r['reconnects']}; /healthz {cell(r['healthz'])}; webhook {cell(r['webhook'])}",
            flush=True,
        )
    table = [
        "| worker | slow connections open (median, min) | attacker reconnects | GET /healthz "
        "| POST /webhooks/viber/dr |",
        "| ------ | ----------------------------------: | ------------------: | ------------ "
        "| ----------------------- |",
    ]
    for label, r in rows:
        table.append(
            f"| {label} | {r['open_median']:.0f}, {r['open_min']} | {r['reconnects']} | "
            f"{cell(r['healthz'])} | {cell(r['webhook'])} |"
        )
    text = "\n".join(table)
    print(text)
    if args.write_docs:
        stamp = (
            f"Measured {time.strftime('%Y-%m-%d')}: {args.connections} slow connections, one byte "
            f"every {args.interval:g} s each, {args.hold:g} s of probes (a /healthz and a webhook "
            f"every half second)."
        )
        write_between(DOCS, START, END, f"{stamp}\n\n{text}")


if __name__ == "__main__":
    main()
