"""The send proxy's cost and bulk registration's rate (`make bench-proxy`, docs/benchmarks.md).

Proxy: NXCLOUD's send API is played by the simulator's send API (app/simulate/send_api.py,
answering each call with a requestId), and wrk sends the same signed calls, 32 at a time, to
it directly and through the production server's proxy, in alternating rounds; the overhead is
the difference of the latencies, the rate the ratio of sends/s. Every send NXCLOUD took must be
registered.

Bulk: batches of 1,000 registrations posted to `POST /api/messages` by a few clients at once
for a while; registrations/s, and every one stored.

The played NXCLOUD keeps its connections open (`--upstream keepalive`, as NXCLOUD does) or,
as werkzeug's development server, closes each after one answer (`close`); both by default.
Every round also takes the CPU per send (per registration) of every process.

    python bench/proxy.py [--db sqlite,postgresql] [--seconds 10] [--upstream keepalive,close]
                          [--no-bulk] [--write-docs]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import ingest as ingest_bench
from run import ROOT, database, free_port, log, server, sqlalchemy_url, viberwatch
from sqlalchemy import create_engine, text

sys.path.insert(0, str(ROOT))

from app.simulate.send_api import PlayedSendApi  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- proxy:start -->", "<!-- proxy:end -->"
CONNECTIONS = 32


class KeptAlive:
    """The played send API (its WSGI app) served with HTTP/1.1 keep-alive, as NXCLOUD serves
    its API: werkzeug's development server closes the connection after every answer, so each
    call, direct or through the proxy, would pay a new TCP connection and a new thread."""

    def __init__(self, api: PlayedSendApi):
        self.api = api
        wsgi = api.wsgi

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            wbufsize = -1  # the answer in one write, flushed after each request

            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path, _, query = self.path.partition("?")
                environ = {
                    "REQUEST_METHOD": "POST",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_LENGTH": str(length),
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "SERVER_NAME": "127.0.0.1",
                    "SERVER_PORT": str(self.server.server_port),
                    "SERVER_PROTOCOL": "HTTP/1.1",
                    "REMOTE_ADDR": self.client_address[0],
                    "wsgi.version": (1, 0),
                    "wsgi.url_scheme": "http",
                    "wsgi.input": io.BytesIO(body),
                    "wsgi.errors": sys.stderr,
                    "wsgi.multithread": True,
                    "wsgi.multiprocess": False,
                    "wsgi.run_once": False,
                }
                for name, value in self.headers.items():
                    key = "HTTP_" + name.upper().replace("-", "_")
                    if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                        environ[key] = value
                started = []
                data = b"".join(
                    wsgi(
                        environ, lambda status, headers, exc=None: started.append((status, headers))
                    )
                )
                status, headers = started[0]
                self.send_response(int(status.split()[0]))
                for name, value in headers:
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # socketserver's default backlog is 5: a burst of new connections (a round's
            # start, a pool opening more) overflowed it, and the kernel's retry of a dropped
            # SYN waits a second, which showed as p99s of 0.7-1 s on both ways.
            request_queue_size = 256

            def handle_error(self, request, client_address):
                pass  # wrk resetting its connections at the end of a round

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def played(self):
        return self.api.played

    def start(self) -> KeptAlive:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.api.server.server_close()


def played_api(keepalive: bool):
    """The played NXCLOUD send API, on a port of its own."""
    api = PlayedSendApi("127.0.0.1", free_port(), lambda events: None)
    return KeptAlive(api).start() if keepalive else api.start()


def wrk(url: str, path: str, seconds: int, tag: str, pace_ms: int = 0) -> dict:
    """wrk's figures for one round; `pace_ms`: each sender waits so long before its next call
    (a rate the machine can serve without queueing), else as fast as answered."""
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "proxy.lua"),
            url,
            "--",
            path,
            tag,
            str(pace_ms),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    if result["errors"]:
        kinds = ", ".join(
            f"{k} {result[k]}"
            for k in ("connect", "read", "write", "status", "timeout")
            if result[k]
        )
        log(f"errors in a round to {path} ({tag}): {kinds}")
    return result


def own_cpu() -> tuple[float, float]:
    """CPU seconds of this process (the played APIs) and of its ended children (wrk)."""
    me, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


class CpuMeter:
    """CPU per operation by process kind over one round: the server's workers, its ingest
    committer, the database server (every PostgreSQL process; SQLite works inside the
    committer), the played NXCLOUD or the bulk clients (this process), wrk."""

    def __init__(self, master: int):
        self.master = master

    def __enter__(self) -> CpuMeter:
        self.groups = ingest_bench.kinds_of(self.master, ingest_bench.server_pids(self.master))
        self.before = self._now()
        return self

    def _now(self) -> dict[str, float]:
        out = {kind: ingest_bench.cpu_seconds(pids) for kind, pids in self.groups.items()}
        out["this process"], out["wrk"] = own_cpu()
        return out

    def __exit__(self, *exc) -> None:
        after = self._now()
        self.seconds = {kind: after[kind] - self.before[kind] for kind in after}

    def per(self, operations: int, kinds: tuple[str, ...]) -> dict[str, float]:
        """Milliseconds of CPU per operation for each kind."""
        return {k: self.seconds[k] * 1000 / max(1, operations) for k in kinds}


def count(url: str, sql: str) -> int:
    engine = create_engine(sqlalchemy_url(url) if url.startswith("postgresql") else url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


PROXY_KINDS = ("workers", "committer", "database", "this process", "wrk")
BULK_KINDS = ("workers", "committer", "database", "this process")
# Paced rounds: each sender waits this long between calls (about 300 sends/s in all), so the
# latency added by the proxy is seen without the queueing of a machine at full load.
PACE_MS = 100
# The machine's load when the run started (other work on the machine shows in every figure).
LOAD_AT_START = os.getloadavg()[0]


def bench_proxy(kind: str, seconds: int, keepalive: bool = True) -> dict:
    # The played API's request log would cost it more than its answers.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # One played NXCLOUD for the direct calls, one behind the proxy: each counts its own.
    direct_api = played_api(keepalive)
    upstream = played_api(keepalive)
    url = database(kind, "bench_proxy", fresh=True)
    viberwatch(url, "db", "upgrade", quiet=True)
    token = viberwatch(url, "create-token", "bench-proxy", quiet=True).stdout.strip().split()[-1]
    os.environ["VIBERWATCH_NXCLOUD_BASE_URL"] = upstream.url
    proxied_path = f"/nxcloud/api/viber/mt?token={token}"
    try:
        with server(url, with_pid=True) as (base, master):
            rounds = []
            wrk(direct_api.url, "/api/viber/mt", 2, "w")  # warm-up, both ways
            wrk(base, proxied_path, 2, "v")
            for i in range(2):
                with CpuMeter(master) as direct_cpu:
                    direct = wrk(direct_api.url, "/api/viber/mt", seconds, f"d{i}")
                with CpuMeter(master) as proxy_cpu:
                    proxied = wrk(base, proxied_path, seconds, f"x{i}")
                direct["cpu"] = direct_cpu.per(direct["requests"], PROXY_KINDS)
                proxied["cpu"] = proxy_cpu.per(proxied["requests"], PROXY_KINDS)
                rounds.append({"direct": direct, "proxied": proxied})
            paced = {
                "direct": wrk(direct_api.url, "/api/viber/mt", seconds, "pd", PACE_MS),
                "proxied": wrk(base, proxied_path, seconds, "px", PACE_MS),
            }
            time.sleep(2)  # the last registrations are committed
    finally:
        os.environ.pop("VIBERWATCH_NXCLOUD_BASE_URL", None)
        direct_api.stop()
        upstream.stop()
    registered = count(url, "SELECT count(*) FROM message WHERE phone IS NOT NULL")
    d = [r["direct"] for r in rounds]
    p = [r["proxied"] for r in rounds]
    return {
        "db": kind,
        "upstream": "kept alive" if keepalive else "a connection per call",
        "direct_rate": statistics.mean(r["rate"] for r in d),
        "proxy_rate": statistics.mean(r["rate"] for r in p),
        "direct_p50_ms": statistics.mean(r["p50_us"] for r in d) / 1000,
        "proxy_p50_ms": statistics.mean(r["p50_us"] for r in p) / 1000,
        "direct_p99_ms": max(r["p99_us"] for r in d) / 1000,
        "proxy_p99_ms": max(r["p99_us"] for r in p) / 1000,
        "errors": sum(r["errors"] for r in d + p) + sum(r["errors"] for r in paced.values()),
        "direct_cpu": {k: statistics.mean(r["cpu"][k] for r in d) for k in PROXY_KINDS},
        "proxy_cpu": {k: statistics.mean(r["cpu"][k] for r in p) for k in PROXY_KINDS},
        "paced": {
            side: {
                "rate": r["rate"],
                "p50_ms": r["p50_us"] / 1000,
                "p99_ms": r["p99_us"] / 1000,
            }
            for side, r in paced.items()
        },
        "registered": registered,
        # Every send the upstream behind the proxy answered with a requestId.
        "proxied_answered": len(upstream.played),
    }


def bench_bulk(kind: str, seconds: int, clients: int = 4, size: int = 1000) -> dict:
    url = database(kind, "bench_bulk", fresh=True)
    viberwatch(url, "db", "upgrade", quiet=True)
    token = viberwatch(url, "create-token", "bench-bulk", quiet=True).stdout.strip().split()[-1]
    sent = []
    lock = threading.Lock()
    with server(url, with_pid=True) as (base, master):
        stop = time.monotonic() + seconds

        def client(c: int) -> None:
            n = 0
            with httpx.Client(base_url=base, timeout=120) as http:
                while time.monotonic() < stop:
                    batch = [
                        {
                            "requestId": f"bulk-{c}-{n}-{i}",
                            "phone": f"+7{c:02d}{n:05d}{i:04d}",
                            "text": "Your code is 1234",
                            "tags": ["bench"],
                        }
                        for i in range(size)
                    ]
                    r = http.post(
                        "/api/messages",
                        json=batch,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    r.raise_for_status()
                    with lock:
                        sent.append(r.json()["accepted"])
                    n += 1

        started = time.monotonic()
        with CpuMeter(master) as cpu, ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        took = time.monotonic() - started
    stored = count(url, "SELECT count(*) FROM message")
    return {
        "db": kind,
        "registrations": sum(sent),
        "seconds": took,
        "rate": sum(sent) / took,
        "stored": stored,
        "clients": clients,
        "batch": size,
        # Microseconds of CPU per registration, by process kind.
        "cpu_us": {k: v * 1000 for k, v in cpu.per(sum(sent), BULK_KINDS).items()},
    }


def markdown(proxy: list[dict], bulk: list[dict]) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({os.cpu_count()} cores; load "
        f"average {LOAD_AT_START:.1f} at the start, {os.getloadavg()[0]:.1f} at the end): "
        f"{CONNECTIONS} senders at once, two rounds each way as fast as answered, then one "
        f"round each way paced ({PACE_MS} ms between a sender's calls).",
        "",
        "| database | played NXCLOUD | direct sends/s | through the proxy | ratio "
        "| p50 direct / proxy ms | overhead p50 | p99 direct / proxy ms | overhead p99 "
        "| paced: sends/s | paced: p50 direct / proxy ms | paced: overhead p50 / p99 ms "
        "| errors | registered / taken |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for r in proxy:
        pd, px = r["paced"]["direct"], r["paced"]["proxied"]
        lines.append(
            f"| {r['db']} | {r['upstream']} | {r['direct_rate']:,.0f} | {r['proxy_rate']:,.0f} | "
            f"{r['proxy_rate'] / r['direct_rate']:.2f} | {r['direct_p50_ms']:.1f} / "
            f"{r['proxy_p50_ms']:.1f} | {r['proxy_p50_ms'] - r['direct_p50_ms']:.1f} | "
            f"{r['direct_p99_ms']:.1f} / {r['proxy_p99_ms']:.1f} | "
            f"{r['proxy_p99_ms'] - r['direct_p99_ms']:.1f} | {px['rate']:,.0f} | "
            f"{pd['p50_ms']:.1f} / {px['p50_ms']:.1f} | {px['p50_ms'] - pd['p50_ms']:.1f} / "
            f"{px['p99_ms'] - pd['p99_ms']:.1f} | {r['errors']} | "
            f"{r['registered']:,} / {r['proxied_answered']:,} |"
        )
    lines += [
        "",
        "CPU ms per send by process (the played NXCLOUD runs in the benchmark's own process):",
        "",
        "| database | played NXCLOUD | way | workers | committer | database server "
        "| played NXCLOUD | wrk | all |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in proxy:
        for way, cpu in (("direct", r["direct_cpu"]), ("through the proxy", r["proxy_cpu"])):
            lines.append(
                f"| {r['db']} | {r['upstream']} | {way} | {cpu['workers']:.2f} | "
                f"{cpu['committer']:.2f} | {cpu['database']:.2f} | {cpu['this process']:.2f} | "
                f"{cpu['wrk']:.2f} | {sum(cpu.values()):.2f} |"
            )
    lines += [
        "",
        "| database | registrations | seconds | registrations/s | stored | clients x batch "
        "| CPU µs per registration: workers / committer / database server / clients |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in bulk:
        c = r["cpu_us"]
        lines.append(
            f"| {r['db']} | {r['registrations']:,} | {r['seconds']:.1f} | {r['rate']:,.0f} | "
            f"{r['stored']:,} | {r['clients']} x {r['batch']:,} | {c['workers']:.0f} / "
            f"{c['committer']:.0f} / {c['database']:.0f} / {c['this process']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--upstream",
        default="keepalive,close",
        help="how the played NXCLOUD serves: keepalive (as NXCLOUD), close (werkzeug's "
        "development server: a connection per call), or both",
    )
    parser.add_argument("--no-bulk", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    kinds = args.db.split(",")
    proxy, bulk = [], []
    for kind in kinds:
        for way in args.upstream.split(","):
            log(f"proxy on {kind}, upstream {way}")
            proxy.append(bench_proxy(kind, args.seconds, keepalive=way == "keepalive"))
        if not args.no_bulk:
            log(f"bulk registration on {kind}")
            bulk.append(bench_bulk(kind, args.seconds))
    out = markdown(proxy, bulk)
    print(out)
    (ROOT / "bench" / ".data").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / ".data" / "proxy.json").write_text(json.dumps({"proxy": proxy, "bulk": bulk}))
    if args.write_docs:
        doc = DOCS.read_text()
        if START in doc:
            head, rest = doc.split(START, 1)
            doc = head + START + "\n" + out + "\n" + END + rest.split(END, 1)[1]
            DOCS.write_text(doc)


if __name__ == "__main__":
    main()
