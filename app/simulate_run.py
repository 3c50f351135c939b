"""Play a simulator script over real HTTP with bounded concurrency, and the `simulate` command."""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional

import click
import httpx
from flask import current_app
from flask.cli import with_appcontext

from . import signing
from .simulate import Event, Script, build_script

PATHS = {"dr": "/webhooks/viber/dr", "message": "/webhooks/viber/message", "register": "/api/messages"}
# NXCLOUD does not document the action of a signed Viber callback; name the webhook.
SIGN_ACTIONS = {"dr": "dr", "message": "message"}
VIBER_BIZ_TYPE = "7"


@dataclass(frozen=True)
class Target:
    """A viberwatch to play against, and the credentials its webhooks and API expect."""

    url: str
    token: Optional[str] = None  # the webhook URL's ?token=
    access_key: Optional[str] = None  # NXCLOUD signature headers on webhooks
    secret: Optional[str] = None
    api_token: Optional[str] = None  # Bearer token for POST /api/messages


def build_request(event: Event, target: Target, ts_ms: int) -> tuple[str, dict, dict]:
    """URL, query parameters and headers of one scripted request."""
    url = target.url.rstrip("/") + PATHS[event.kind]
    headers = {"Content-Type": "application/json", "User-Agent": "viberwatch-simulator"}
    params = {}
    if event.kind == "register":
        if target.api_token:
            headers["Authorization"] = f"Bearer {target.api_token}"
        return url, params, headers
    if target.token:
        params["token"] = target.token
    if target.access_key and target.secret:
        ts = str(ts_ms)
        action = SIGN_ACTIONS[event.kind]
        headers.update({"accessKey": target.access_key, "ts": ts, "bizType": VIBER_BIZ_TYPE,
                        "action": action,
                        "sign": signing.sign(target.access_key, action, VIBER_BIZ_TYPE, ts, event.body,
                                             target.secret)})
    return url, params, headers


@dataclass
class Summary:
    planned: int
    sent: int = 0
    answered_2xx: int = 0
    refused: int = 0
    errors: int = 0
    statuses: Counter = field(default_factory=Counter)
    answered_by_kind: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    problems: Counter = field(default_factory=Counter)  # first line of each distinct failure
    elapsed: float = 0.0

    def percentile(self, p: float) -> Optional[float]:
        data = sorted(self.latencies_ms)
        if not data:
            return None
        if len(data) == 1:
            return data[0]
        return statistics.quantiles(data, n=100, method="inclusive")[round(p) - 1]

    def lines(self) -> list[str]:
        rate = self.sent / self.elapsed if self.elapsed > 0 else 0.0
        out = [f"sent {self.sent} of {self.planned} requests in {self.elapsed:.1f} s ({rate:.1f}/s)",
               f"answered 2xx {self.answered_2xx}, refused {self.refused}, network errors {self.errors}"]
        if self.answered_by_kind:
            out.append("accepted: " + ", ".join(f"{n} {k}" for k, n in sorted(self.answered_by_kind.items())))
        if self.statuses:
            out.append("HTTP status: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items())))
        if self.latencies_ms:
            p = {q: self.percentile(q) for q in (50, 90, 99)}
            out.append(f"latency ms: p50 {p[50]:.1f}  p90 {p[90]:.1f}  p99 {p[99]:.1f}  "
                       f"max {max(self.latencies_ms):.1f}")
        for problem, n in self.problems.most_common(5):
            out.append(f"  {n} × {problem}")
        return out


async def play(script: Script, target: Target, *, concurrency: int = 16, timeout: float = 10.0,
               on_done: Optional[Callable[[], None]] = None) -> Summary:
    """Send every event of the script at its time; a message's events go strictly in order."""
    summary = Summary(planned=len(script.events))
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        zero = loop.time()

        async def send(event: Event) -> None:
            url, params, headers = build_request(event, target, int(time.time() * 1000))
            async with gate:
                started = loop.time()
                try:
                    response = await client.post(url, params=params, headers=headers, content=event.body)
                except httpx.HTTPError as exc:
                    summary.errors += 1
                    summary.problems[f"{event.kind}: {type(exc).__name__}: {exc}".splitlines()[0]] += 1
                    return
                finally:
                    summary.sent += 1
                    if on_done:
                        on_done()
                summary.latencies_ms.append((loop.time() - started) * 1000)
            summary.statuses[response.status_code] += 1
            if 200 <= response.status_code < 300:
                summary.answered_2xx += 1
                summary.answered_by_kind[event.kind] += 1
            else:
                summary.refused += 1
                summary.problems[f"{event.kind}: HTTP {response.status_code} {response.text[:160]}"
                                 .splitlines()[0]] += 1

        async def one_message(events: tuple[Event, ...]) -> None:
            for event in events:
                wait = zero + event.at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await send(event)

        await asyncio.gather(*(one_message(m.events) for m in script.messages))
        summary.elapsed = loop.time() - zero
    return summary


def run(script: Script, target: Target, *, concurrency: int = 16, timeout: float = 10.0,
        on_done: Optional[Callable[[], None]] = None) -> Summary:
    return asyncio.run(play(script, target, concurrency=concurrency, timeout=timeout, on_done=on_done))


@click.command("simulate")
@click.option("--url", default="http://127.0.0.1:5000", show_default=True,
              help="Base URL of the viberwatch to play against.")
@click.option("--rate", type=float, default=5.0, show_default=True, help="New messages per second.")
@click.option("--duration", type=float, help="Start messages for this many seconds (rate × duration).")
@click.option("--messages", type=int, help="Number of messages (default 100).")
@click.option("--seed", type=int, help="Reproduce a run: same seed, same bodies in the same order.")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register each message through POST /api/messages, as a sending system would.")
@click.option("--api-token", envvar="VIBERWATCH_API_TOKEN", help="Bearer token for the JSON API.")
@click.option("--token", help="Webhook URL token (default: the WEBHOOK_TOKEN setting).")
@click.option("--access-key", help="Sign webhooks with this accessKey (default: WEBHOOK_SIGN_ACCESS_KEY).")
@click.option("--secret", help="Signing secret (default: WEBHOOK_SIGN_SECRET).")
@click.option("--speed", type=float, default=1.0, show_default=True,
              help="Divide the delays between a message's receipts (10 = ten times faster).")
@click.option("--concurrency", type=int, default=16, show_default=True, help="Requests in flight at most.")
@click.option("--zone", default=None, help="Zone of the sendTime fields (default: SENDTIME_TZ).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@with_appcontext
def simulate_command(url, rate, duration, messages, seed, register, api_token, token, access_key,
                     secret, speed, concurrency, zone, quiet):
    """Play NXCLOUD: push synthetic receipts and replies to a running viberwatch."""
    if duration is not None and messages is not None:
        raise click.UsageError("give --duration or --messages, not both")
    if rate <= 0 or speed <= 0 or concurrency < 1:
        raise click.UsageError("--rate, --speed and --concurrency must be positive")
    count = messages if messages is not None else (max(1, round(rate * duration)) if duration else 100)
    config = current_app.config
    target = Target(url=url, token=token or config.get("WEBHOOK_TOKEN"),
                    access_key=access_key or config.get("WEBHOOK_SIGN_ACCESS_KEY"),
                    secret=secret or config.get("WEBHOOK_SIGN_SECRET"), api_token=api_token)
    zone = zone or str(config.get("SENDTIME_TZ", "UTC+08:00"))
    seeded = seed is not None
    if not seeded:
        seed = int.from_bytes(os.urandom(4), "big")
    start = None if seeded else datetime.now(timezone.utc)
    script = build_script(seed, count, rate=rate, register=register, start=start, zone=zone, speed=speed)
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(script.outcomes().items()))
    click.echo(f"seed {seed}: {count} messages ({outcomes}), {len(script.events)} requests to {url}")
    if quiet:
        summary = run(script, target, concurrency=concurrency)
    else:
        with click.progressbar(length=len(script.events), label="pushing", file=sys.stderr) as bar:
            summary = run(script, target, concurrency=concurrency, on_done=lambda: bar.update(1))
    for line in summary.lines():
        click.echo(line)
    if summary.refused or summary.errors:
        sys.exit(1)
