"""The send proxy's cost and bulk registration's rate (`make bench-proxy`, docs/benchmarks.md).

Proxy: NXCLOUD's send API is played by the simulator's send API (app/simulate/send_api.py,
answering each call with a requestId), and wrk sends the same signed calls, 32 at a time, to
it directly and through the production server's proxy, in alternating rounds; the overhead is
the difference of the latencies, the rate the ratio of sends/s. Every send NXCLOUD took must be
registered.

Bulk: batches of 1,000 registrations posted to `POST /api/messages` by a few clients at once
for a while; registrations/s, and every one stored.

    python bench/proxy.py [--db sqlite,postgresql] [--seconds 10] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
from run import ROOT, database, free_port, log, server, sqlalchemy_url, viberwatch
from sqlalchemy import create_engine, text

sys.path.insert(0, str(ROOT))

from app.simulate.send_api import PlayedSendApi  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- proxy:start -->", "<!-- proxy:end -->"
CONNECTIONS = 32


def wrk(url: str, path: str, seconds: int, tag: str) -> dict:
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
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return result


def count(url: str, sql: str) -> int:
    engine = create_engine(sqlalchemy_url(url) if url.startswith("postgresql") else url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def bench_proxy(kind: str, seconds: int) -> dict:
    # The played API's request log would cost it more than its answers.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # One played NXCLOUD for the direct calls, one behind the proxy: each counts its own.
    direct_api = PlayedSendApi("127.0.0.1", free_port(), lambda events: None).start()
    upstream = PlayedSendApi("127.0.0.1", free_port(), lambda events: None).start()
    url = database(kind, "bench_proxy", fresh=True)
    viberwatch(url, "db", "upgrade", quiet=True)
    token = viberwatch(url, "create-token", "bench-proxy", quiet=True).stdout.strip().split()[-1]
    os.environ["VIBERWATCH_NXCLOUD_BASE_URL"] = upstream.url
    try:
        with server(url) as base:
            rounds = []
            wrk(direct_api.url, "/api/viber/mt", 2, "w")  # warm-up, both ways
            wrk(base, f"/nxcloud/api/viber/mt?token={token}", 2, "v")
            for i in range(2):
                direct = wrk(direct_api.url, "/api/viber/mt", seconds, f"d{i}")
                proxied = wrk(base, f"/nxcloud/api/viber/mt?token={token}", seconds, f"x{i}")
                rounds.append({"direct": direct, "proxied": proxied})
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
        "direct_rate": statistics.mean(r["rate"] for r in d),
        "proxy_rate": statistics.mean(r["rate"] for r in p),
        "direct_p50_ms": statistics.mean(r["p50_us"] for r in d) / 1000,
        "proxy_p50_ms": statistics.mean(r["p50_us"] for r in p) / 1000,
        "direct_p99_ms": max(r["p99_us"] for r in d) / 1000,
        "proxy_p99_ms": max(r["p99_us"] for r in p) / 1000,
        "errors": sum(r["errors"] for r in d + p),
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
    with server(url) as base:
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
        with ThreadPoolExecutor(clients) as pool:
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
    }


def markdown(proxy: list[dict], bulk: list[dict]) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d} ({len(proxy)} databases; 2 cores): "
        f"{CONNECTIONS} senders at once, two rounds each way.",
        "",
        "| database | direct sends/s | through the proxy | ratio | p50 direct / proxy ms "
        "| overhead p50 | p99 direct / proxy ms | overhead p99 | errors | registered / taken |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in proxy:
        lines.append(
            f"| {r['db']} | {r['direct_rate']:,.0f} | {r['proxy_rate']:,.0f} | "
            f"{r['proxy_rate'] / r['direct_rate']:.2f} | {r['direct_p50_ms']:.1f} / "
            f"{r['proxy_p50_ms']:.1f} | {r['proxy_p50_ms'] - r['direct_p50_ms']:.1f} | "
            f"{r['direct_p99_ms']:.1f} / {r['proxy_p99_ms']:.1f} | "
            f"{r['proxy_p99_ms'] - r['direct_p99_ms']:.1f} | {r['errors']} | "
            f"{r['registered']:,} / {r['proxied_answered']:,} |"
        )
    lines += [
        "",
        "| database | registrations | seconds | registrations/s | stored | clients x batch |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in bulk:
        lines.append(
            f"| {r['db']} | {r['registrations']:,} | {r['seconds']:.1f} | {r['rate']:,.0f} | "
            f"{r['stored']:,} | {r['clients']} x {r['batch']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    kinds = args.db.split(",")
    proxy, bulk = [], []
    for kind in kinds:
        log(f"proxy on {kind}")
        proxy.append(bench_proxy(kind, args.seconds))
        log(f"bulk registration on {kind}")
        bulk.append(bench_bulk(kind, args.seconds))
    out = markdown(proxy, bulk)
    print(out)
    if args.write_docs:
        doc = DOCS.read_text()
        if START in doc:
            head, rest = doc.split(START, 1)
            doc = head + START + "\n" + out + "\n" + END + rest.split(END, 1)[1]
            DOCS.write_text(doc)


if __name__ == "__main__":
    main()
