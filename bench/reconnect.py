"""Reconnect: how soon an open messages page is live again once its server answers again.

The production command (gunicorn, gunicorn.conf.py) on a SQLite file; Chromium (Playwright)
opens the messages page signed in. Each of --rounds rounds stops the server (SIGTERM to its
master, then whatever of its processes is left is killed, until the port refuses
connections), leaves it down for the next of --downtimes seconds (long enough, in turn, for
static/live.js's back-off to reach its 3 s cap), starts it again on the same port and
database, and polls GET /healthz every 20 ms. The figure of a round is the time from its
first 200 to the page's `data-live-state` being `live` again. A webhook posted as soon as the
server answers must show on the page exactly once. Over the run, the page must load no
document and request nothing again (its socket aside), and log no console error of its own.

Target: the page is live again within 3 s of the server answering, and reloads nothing.

    python bench/reconnect.py [--rounds 20] [--downtimes 1 5 15 30] [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from live_latency import (  # noqa: E402
    DOCS,
    free_port,
    open_live_messages_page,
    prepare_database,
    start_server,
    stop_server,
)
from report import write_between  # noqa: E402

from support.bodies import receipt  # noqa: E402
from support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

START, END = "<!-- reconnect:start -->", "<!-- reconnect:end -->"
DR = "/webhooks/viber/dr"
TARGET = 3.0
POLL = 0.02
LIVE = "() => document.body.dataset.liveState === 'live'"
NOT_LIVE = "() => document.body.dataset.liveState !== 'live'"
# Ids of the messages list's rows that appear more than once.
DUPLICATE_ROWS = """() => {
  const seen = new Set(), twice = [];
  document.querySelectorAll('#messages-body > tr[id]').forEach(r => {
    if (seen.has(r.id)) twice.push(r.id);
    seen.add(r.id);
  });
  return twice;
}"""
# The page's connection states as they change, with the page's clock (ms since the epoch).
WATCH_STATES = """() => {
  window.liveStates = [];
  new MutationObserver(() => window.liveStates.push([document.body.dataset.liveState, Date.now()]))
    .observe(document.body, {attributes: true, attributeFilter: ['data-live-state']});
}"""
# What Chromium itself logs for a socket that could not connect (no script can stop it).
REFUSED_NOTE = "WebSocket connection to"


def processes_of(url: str) -> list[int]:
    """Every process started with DATABASE_URL=`url`: the server's master, its workers and
    ingest committer, and any of them a master killed mid-start left behind."""
    needle = f"DATABASE_URL={url}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return True
    return False


def stop_everything(proc, port: int, url: str) -> float:
    """Stop the server and every process it started; seconds until the port refuses."""
    began = time.monotonic()
    stop_server(proc)
    for pid in processes_of(url):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while not refuses(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"port {port} still answers after the server was stopped")
        time.sleep(POLL)
    return time.monotonic() - began


def other_benchmarks() -> set[str]:
    """Benchmark scripts other processes of the machine are running."""
    mine = {os.getpid(), os.getppid()}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for arg in args:
            path = Path(arg)
            if path.suffix == ".py" and path.parent.name == "bench":
                found.add(f"bench/{path.name}")
    return found


def answering(base: str, started: dict, limit: float = 60) -> float:
    """Poll GET /healthz until it answers 200; the instant it did."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if "error" in started:
            raise SystemExit(
                f"the server did not start again (load average {os.getloadavg()[0]:.1f}): "
                f"{started['error']}"
            )
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(POLL)
    raise SystemExit(f"/healthz did not answer 200 within {limit:.0f} s of the start")


def run(rounds: int, downtimes: list[float]) -> dict:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="vw-reconnect-"))
    # The server's spool in the run's own folder, never one another server drains.
    os.environ["VIBERWATCH_SPOOL_FOLDER"] = str(work / "spool")
    url = f"sqlite:///{work / 'bench.db'}"
    secret = uuid.uuid4().hex
    prepare_database(url, secret)
    port = free_port()
    others = other_benchmarks()
    load = os.getloadavg()
    proc, base = start_server("prod", url, secret, port, None)
    results: list[dict] = []
    watched = {"loads": 0, "requests": [], "errors": [], "refused": {}, "sockets": 0}
    try:
        # Rows on the list before the page opens, as on a server that has run a while.
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(10):
                http.post(DR, json=receipt(uuid.uuid4().hex, "success"))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = open_live_messages_page(browser, base)
            origin = page.evaluate("performance.timeOrigin")
            page.evaluate(WATCH_STATES)

            def on_console(msg) -> None:
                if msg.type != "error":
                    return
                if msg.text.startswith(REFUSED_NOTE):
                    why = msg.text.split("failed: ", 1)[-1]
                    watched["refused"][why] = watched["refused"].get(why, 0) + 1
                else:
                    watched["errors"].append(msg.text)

            def on_request(request) -> None:
                if request.resource_type != "websocket":
                    watched["requests"].append(f"{request.method} {request.url}")

            def on_socket(_ws) -> None:
                watched["sockets"] += 1

            page.on("load", lambda: watched.__setitem__("loads", watched["loads"] + 1))
            page.on("console", on_console)
            page.on("pageerror", lambda exc: watched["errors"].append(str(exc)))
            page.on("request", on_request)
            page.on("websocket", on_socket)

            for n in range(rounds):
                down = downtimes[n % len(downtimes)]
                stop_at = time.time()
                stopping = stop_everything(proc, port, url)
                page.wait_for_function(NOT_LIVE, polling=POLL * 1000, timeout=30_000)
                left = next(
                    t / 1000 - stop_at
                    for state, t in page.evaluate("window.liveStates.splice(0)")
                    if state != "live" and t / 1000 >= stop_at
                )
                sockets_before = watched["sockets"]
                page.wait_for_timeout(down * 1000)

                started: dict = {}

                def start(into: dict = started) -> None:
                    try:
                        into["server"] = start_server("prod", url, secret, port, None)
                    except BaseException as exc:
                        into["error"] = exc

                starter = threading.Thread(target=start, daemon=True)
                starting = time.monotonic()
                starter.start()
                answered = answering(base, started)
                rid = uuid.uuid4().hex
                posted: dict = {}

                def post(into: dict = posted, rid: str = rid) -> None:
                    into["status"] = httpx.post(
                        base + DR, json=receipt(rid, "success"), timeout=30
                    ).status_code

                poster = threading.Thread(target=post)
                poster.start()
                page.wait_for_function(LIVE, polling=POLL * 1000, timeout=60_000)
                live = time.monotonic()
                page.wait_for_selector(f"#msg-{rid}", state="attached", timeout=30_000)
                shown = time.monotonic()
                poster.join(30)
                starter.join(60)
                if "server" not in started:
                    raise SystemExit(f"the server did not start again: {started.get('error')}")
                proc = started["server"][0]
                page.wait_for_timeout(500)
                result = {
                    "round": n + 1,
                    "downtime": down,
                    "stopping": stopping,
                    "left": left,
                    "starting": answered - starting,
                    "seconds": live - answered,
                    "row": shown - answered,
                    "webhook": posted.get("status"),
                    "copies": page.locator(f"#msg-{rid}").count(),
                    "duplicates": page.evaluate(DUPLICATE_ROWS),
                    "attempts": watched["sockets"] - sockets_before,
                    "same_document": page.evaluate("performance.timeOrigin") == origin,
                }
                results.append(result)
                print(
                    f"round {n + 1:2d}: down {down:4.0f} s (stopping took {stopping:4.1f} s, the "
                    f"page left live after {left:4.1f} s; starting {result['starting']:4.1f} s), "
                    f"live again {result['seconds']:5.2f} s after /healthz answered, webhook "
                    f"row {result['row']:5.2f} s ({result['copies']} on the page), "
                    f"{result['attempts']} socket attempts",
                    flush=True,
                )
            browser.close()
    finally:
        stop_everything(proc, port, url)
        shutil.rmtree(work, ignore_errors=True)
    others |= other_benchmarks()
    return {
        "rounds": results,
        "watched": watched,
        "load": load,
        "load_after": os.getloadavg(),
        "others": sorted(others),
        "downtimes": downtimes,
    }


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def markdown(run: dict, command: str) -> str:
    rounds, watched = run["rounds"], run["watched"]
    others = run["others"]
    context = (
        f"while {', '.join(f'`{o}`' for o in others)} also ran on the machine"
        if others
        else "with no other benchmark running"
    )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `make bench-reconnect` (`{command}`): "
        f"{len(rounds)} round{'s' if len(rounds) != 1 else ''}, the "
        f"server down {', '.join(f'{d:g}' for d in run['downtimes'])} s in turn, the "
        "production command on SQLite, one Chromium tab on the messages page; "
        f"{os.cpu_count()} cores, load average {run['load'][0]:.1f} at the start and "
        f"{run['load_after'][0]:.1f} at the end, {context}. Each figure is the time from the "
        "first `200` of `GET /healthz` (polled every 20 ms) to the page's "
        "`data-live-state` being `live` again (polled every 20 ms).",
        "",
        f"| server down | rounds | median | p95 | max | within {TARGET:g} s | "
        "socket attempts (median) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for down in run["downtimes"]:
        these = [r for r in rounds if r["downtime"] == down]
        if not these:
            continue
        s = [r["seconds"] for r in these]
        lines.append(
            f"| {down:g} s | {len(these)} | {statistics.median(s):.2f} s | {pct(s, 95):.2f} s | "
            f"{max(s):.2f} s | {sum(x <= TARGET for x in s)} of {len(s)} | "
            f"{statistics.median(r['attempts'] for r in these):g} |"
        )
    every = [r["seconds"] for r in rounds]
    rows = [r["row"] for r in rounds]
    late = [r for r in rounds if r["seconds"] > TARGET]
    once = sum(r["copies"] == 1 and r["webhook"] == 200 for r in rounds)
    duplicates = sum(len(r["duplicates"]) for r in rounds)
    reloads = watched["loads"] + sum(not r["same_document"] for r in rounds)
    notes = sum(watched["refused"].values())
    reasons = "; ".join(
        f"{count} `{why}`" for why, count in sorted(watched["refused"].items(), key=lambda x: -x[1])
    )

    def spread(key: str) -> str:
        values = [r[key] for r in rounds]
        return f"median {statistics.median(values):.1f} s, {min(values):.1f}-{max(values):.1f} s"

    lines += [
        "",
        f"Target: live again within {TARGET:g} s of the server answering, in every round: "
        f"{'met' if not late else 'missed'} ({len(every) - len(late)} of {len(every)} "
        f"rounds; all rounds median {statistics.median(every):.2f} s, p95 "
        f"{pct(every, 95):.2f} s, max {max(every):.2f} s). The webhook posted as soon as "
        f"`/healthz` answered showed on the page exactly once in {once} of {len(rounds)} "
        f"rounds (its row {statistics.median(rows):.2f} s after the answer, median; max "
        f"{max(rows):.2f} s); rows on the list twice: {duplicates}.",
        "",
        f"Reloads nothing it already has: document loads {reloads}, requests other than the "
        f"socket {len(watched['requests'])}. Console errors from the page: "
        f"{len(watched['errors'])}. Chromium's own notes of a socket attempt that failed "
        f"while the server was away (`WebSocket connection to ... failed: ...`, which no "
        f"script can stop): {notes}{f' ({reasons})' if reasons else ''}.",
        "",
        "Socket attempts count every one from the page leaving `live` to its being live "
        f"again, that one included. Stopping the server (SIGTERM to its master until the port "
        f"refused) took {spread('stopping')}; the page left `live` {spread('left')} after the "
        f"SIGTERM; starting it again until `/healthz` answered took {spread('starting')}.",
    ]
    if watched["errors"]:
        lines += ["", "Console errors:", ""] + [f"- `{e}`" for e in watched["errors"][:10]]
    if watched["requests"]:
        lines += ["", "Requests:", ""] + [f"- `{r}`" for r in watched["requests"][:10]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--downtimes",
        type=float,
        nargs="+",
        default=[1.0, 5.0, 15.0, 30.0],
        help="seconds the server stays down, round after round in turn",
    )
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    result = run(args.rounds, args.downtimes)
    command = f"bench/reconnect.py --rounds {args.rounds}"
    if args.downtimes != parser.get_default("downtimes"):
        command += " --downtimes " + " ".join(f"{d:g}" for d in args.downtimes)
    text = markdown(result, command)
    print(text)
    if args.write_docs:
        write_between(DOCS, START, END, text)


if __name__ == "__main__":
    main()
