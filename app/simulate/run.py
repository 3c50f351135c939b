"""Play a simulator script over real HTTP with bounded concurrency (the `simulate` command,
which plays it, is in cli.py)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from ..core import signing
from ..sending.nxcloud import ACTION as SEND_ACTION
from .script import Event, Script
from .send_api import PlayedSendApi

PATHS = {
    "dr": "/webhooks/viber/dr",
    "message": "/webhooks/viber/message",
    "register": "/api/messages",
    "send": "/nxcloud/api/viber/mt",  # viberwatch's send proxy, in front of the send API
}
TAGS_HEADER = "X-Viberwatch-Tags"
SEND_PATH_HINT = "/api/viber/mt (set NXCLOUD_BASE_URL to its base)"


@dataclass(frozen=True)
class Target:
    """A viberwatch to play against, and the credentials its webhooks and API expect."""

    url: str
    token: str | None = None  # the webhook URL's ?token=
    access_key: str | None = None  # NXCLOUD signature headers on webhooks
    secret: str | None = None
    api_token: str | None = None  # Bearer token for POST /api/messages and the send proxy
    send_access_key: str | None = None  # NXCLOUD's signature on sends (NXCLOUD_ACCESS_KEY)
    send_secret: str | None = None


def send_headers(target: Target, body: bytes, ts_ms: int, tags: tuple[str, ...] = ()) -> dict:
    """Headers of a send through viberwatch's send proxy: NXCLOUD's signature (which the proxy
    forwards), and viberwatch's token and tags (which it does not)."""
    headers = {"Content-Type": "application/json", "User-Agent": "viberwatch-simulator"}
    if target.api_token:
        headers["Authorization"] = f"Bearer {target.api_token}"
    if tags:
        headers[TAGS_HEADER] = ",".join(tags)
    if target.send_access_key and target.send_secret:
        ts = str(ts_ms)
        headers.update(
            {
                "accessKey": target.send_access_key,
                "ts": ts,
                "bizType": signing.VIBER_BIZ_TYPE,
                "action": SEND_ACTION,
                "sign": signing.sign(
                    target.send_access_key,
                    SEND_ACTION,
                    signing.VIBER_BIZ_TYPE,
                    ts,
                    body,
                    target.send_secret,
                ),
            }
        )
    return headers


def build_request(event: Event, target: Target, ts_ms: int) -> tuple[str, dict, dict]:
    """URL, query parameters and headers of one scripted request."""
    url = target.url.rstrip("/") + PATHS[event.kind]
    headers = {"Content-Type": "application/json", "User-Agent": "viberwatch-simulator"}
    params = {}
    if event.kind == "send":
        return url, params, send_headers(target, event.body, ts_ms, event.tags)
    if event.kind == "register":
        if target.api_token:
            headers["Authorization"] = f"Bearer {target.api_token}"
        return url, params, headers
    if target.token:
        params["token"] = target.token
    if target.access_key and target.secret:
        ts = str(ts_ms)
        action = signing.CALLBACK_ACTIONS[event.kind]
        headers.update(
            {
                "accessKey": target.access_key,
                "ts": ts,
                "bizType": signing.VIBER_BIZ_TYPE,
                "action": action,
                "sign": signing.sign(
                    target.access_key, action, signing.VIBER_BIZ_TYPE, ts, event.body, target.secret
                ),
            }
        )
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
    # The requestId the send API answered each send through the proxy with, by the script's
    # own id; and the requests not made because their message's send was not taken.
    answered: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    # time.monotonic() when the script started and ended; a run stopped early (Ctrl-C) has
    # no end, and counts up to the moment it is reported.
    started: float | None = None
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (time.monotonic() if self.finished is None else self.finished) - self.started

    def percentile(self, p: float) -> float | None:
        data = sorted(self.latencies_ms)
        if not data:
            return None
        if len(data) == 1:
            return data[0]
        return statistics.quantiles(data, n=100, method="inclusive")[round(p) - 1]

    def lines(self) -> list[str]:
        elapsed = self.elapsed
        rate = self.sent / elapsed if elapsed > 0 else 0.0
        out = [
            f"sent {self.sent} of {self.planned} requests in {elapsed:.1f} s ({rate:.1f}/s)",
            f"answered 2xx {self.answered_2xx}, refused {self.refused}, network errors {self.errors}",
        ]
        if self.answered_by_kind:
            out.append(
                "accepted: "
                + ", ".join(f"{n} {k}" for k, n in sorted(self.answered_by_kind.items()))
            )
        if self.statuses:
            out.append(
                "HTTP status: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
            )
        if self.answered:
            out.append(f"sent through the send proxy: {len(self.answered)} messages")
        if self.skipped:
            out.append(f"not made: {self.skipped} receipts and replies of messages not sent")
        if self.latencies_ms:
            p = {q: self.percentile(q) for q in (50, 90, 99)}
            out.append(
                f"latency ms: p50 {p[50]:.1f}  p90 {p[90]:.1f}  p99 {p[99]:.1f}  "
                f"max {max(self.latencies_ms):.1f}"
            )
        for problem, n in self.problems.most_common(5):
            out.append(f"  {n} × {problem}")
        return out


class Progress:
    """The run as it goes: messages sent or registered, receipts, replies, failures and the
    request rate. On a terminal one line rewritten in place a few times a second; otherwise
    (a pipe, a log file) a plain line every `every` seconds."""

    TTY_EVERY = 0.5

    def __init__(self, stream, every: float = 10.0):
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.every = self.TTY_EVERY if self.tty else every
        self.stopped = False
        self._last: tuple[float, int] | None = None  # (time, requests) at the last line

    def line(self, summary: Summary) -> str:
        now = time.monotonic()
        kinds = summary.answered_by_kind
        if self._last is None:
            rate = summary.sent / summary.elapsed if summary.elapsed > 0 else 0.0
        else:
            gap = now - self._last[0]
            rate = (summary.sent - self._last[1]) / gap if gap > 0 else 0.0
        self._last = (now, summary.sent)
        failed = summary.refused + summary.errors
        return (
            f"{summary.elapsed:5.1f} s  messages {kinds['send'] + kinds['register']}"
            f" · receipts {kinds['dr']} · replies {kinds['message']}"
            f" · {summary.sent}/{summary.planned} requests, {rate:.1f}/s"
            + (f" · {failed} failed" if failed else "")
        )

    def show(self, summary: Summary) -> None:
        text = self.line(summary)
        # \r and erase-line: the line replaces the previous one on a terminal.
        self.stream.write(f"\r\x1b[2K{text}" if self.tty else f"progress: {text}\n")
        self.stream.flush()

    async def run(self, summary: Summary) -> None:
        while not self.stopped:
            await asyncio.sleep(self.every)
            if not self.stopped:
                self.show(summary)

    def finish(self, summary: Summary) -> None:
        """Stop; on a terminal the last figures stay on their line, the summary below."""
        if self.stopped:
            return
        self.stopped = True
        if self.tty:
            self.show(summary)
            self.stream.write("\n")
            self.stream.flush()


class SendPathError(Exception):
    """Sends through viberwatch's send proxy would not reach the played send API."""


class Player:
    """Sends events to the target over one pooled client, and counts what became of them."""

    def __init__(
        self,
        target: Target,
        client: httpx.AsyncClient,
        concurrency: int,
        on_done: Callable[[], None] | None = None,
        send_api: PlayedSendApi | None = None,
    ):
        self.target = target
        self.client = client
        self.gate = asyncio.Semaphore(concurrency)
        self.on_done = on_done
        self.send_api = send_api  # answers the sends the proxy forwards
        self.summary = Summary(planned=0)
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task] = set()  # scheduled by play_later, kept until done

    async def check_send_path(self, appkey: str = "SIMAPP01") -> None:
        """Before any message: a probe through the proxy must come back from this process's
        played send API (else the proxy would forward the script's sends somewhere else,
        perhaps to the real NXCLOUD). The probe has no phone, so nothing is delivered."""
        if self.send_api is None:
            raise SendPathError("sends through the proxy need the played send API (--send-api)")
        body, nonce = self.send_api.probe_body(appkey)
        url = self.target.url.rstrip("/") + PATHS["send"]
        try:
            response = await self.client.post(
                url, content=body, headers=send_headers(self.target, body, int(time.time() * 1000))
            )
        except httpx.HTTPError as exc:
            raise SendPathError(f"could not reach the send proxy at {url}: {exc}") from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        data = answer.get("data") if isinstance(answer, dict) else None
        if isinstance(data, dict) and data.get("probe") == nonce:
            return
        said = answer.get("error") if isinstance(answer, dict) else None
        said = f"HTTP {response.status_code}: {said or response.text[:200].strip()}"
        if response.status_code in (401, 403):
            raise SendPathError(
                f"the send proxy refused the simulator ({said}); give it an API token "
                "with --api-token"
            )
        raise SendPathError(
            f"the send proxy at {url} does not forward to the played send API ({said}); "
            f"set the server's NXCLOUD_BASE_URL to {self.send_api.url}"
        )

    async def send(self, event: Event) -> str | None:
        """Make one request; for a send, the requestId it was answered with (None if it was not
        taken)."""
        summary = self.summary
        url, params, headers = build_request(event, self.target, int(time.time() * 1000))
        if event.kind == "send" and self.send_api is not None:
            self.send_api.expect(event.body)
        async with self.gate:
            started = self.loop.time()
            try:
                response = await self.client.post(
                    url, params=params, headers=headers, content=event.body
                )
            except httpx.HTTPError as exc:
                summary.errors += 1
                summary.problems[f"{event.kind}: {type(exc).__name__}: {exc}".splitlines()[0]] += 1
                return None
            finally:
                summary.sent += 1
                if self.on_done:
                    self.on_done()
            summary.latencies_ms.append((self.loop.time() - started) * 1000)
        summary.statuses[response.status_code] += 1
        refusal = None
        if not 200 <= response.status_code < 300:
            refusal = f"HTTP {response.status_code} {response.text[:160]}"
        elif event.kind == "send":
            request_id, refusal = _send_answer(response)
            if request_id is not None:
                summary.answered[event.request_id] = request_id
        if refusal is None:
            summary.answered_2xx += 1
            summary.answered_by_kind[event.kind] += 1
            return summary.answered.get(event.request_id) if event.kind == "send" else None
        summary.refused += 1
        summary.problems[f"{event.kind}: {refusal}".splitlines()[0]] += 1
        return None

    async def play_events(self, events: tuple[Event, ...], zero: float) -> None:
        """One message's events at their times after `zero`, strictly in order. After a send,
        the rest follow the requestId it was answered with; a send not taken ends the message."""
        request_id = None
        for n, event in enumerate(events):
            wait = zero + event.at - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if request_id is not None:
                event = event.following(request_id)
            if event.kind != "send":
                await self.send(event)
                continue
            request_id = await self.send(event)
            if request_id is None:
                self.summary.skipped += len(events) - n - 1
                return

    def play_later(self, events: tuple[Event, ...]) -> None:
        """Schedule a message's events from now (thread-safe through call_soon_threadsafe)."""
        self.summary.planned += len(events)
        task = self.loop.create_task(self.play_events(events, self.loop.time()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _send_answer(response: httpx.Response) -> tuple[str | None, str | None]:
    """(requestId, None) for a send NXCLOUD took, else (None, why not)."""
    try:
        answer = response.json()
    except ValueError:
        return None, f"not NXCLOUD's answer: {response.text[:160]}"
    data = answer.get("data") if isinstance(answer, dict) else None
    request_id = data.get("requestId") if isinstance(data, dict) else None
    if answer.get("code") == 0 and isinstance(request_id, str) and request_id:
        return request_id, None
    return None, f"NXCLOUD code {answer.get('code')} {str(answer.get('message'))[:160]}"


async def play(
    script: Script,
    target: Target,
    *,
    concurrency: int = 16,
    timeout: float = 10.0,
    on_done: Callable[[], None] | None = None,
    on_start: Callable[[Player], None] | None = None,
    then: Callable[[Player], Awaitable[None]] | None = None,
    send_api: PlayedSendApi | None = None,
) -> Summary:
    """Send every event of the script at its time; `then` runs after, with the same player.
    A script with sends (through viberwatch's send proxy) first checks that the proxy
    forwards them to `send_api` (SendPathError if not)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        player = Player(target, client, concurrency, on_done, send_api)
        player.summary.planned = len(script.events)
        if on_start is not None:
            on_start(player)
        if script.count("send"):
            await player.check_send_path()
        zero = player.loop.time()
        player.summary.started = time.monotonic()
        await asyncio.gather(*(player.play_events(m.events, zero) for m in script.messages))
        player.summary.finished = time.monotonic()
        if then is not None:
            await then(player)
        if player._tasks:
            # Sends scheduled meanwhile (play_later) are answered before the summary is made.
            await asyncio.wait(set(player._tasks), timeout=timeout)
    return player.summary


def run(
    script: Script,
    target: Target,
    *,
    concurrency: int = 16,
    timeout: float = 10.0,
    on_done: Callable[[], None] | None = None,
    send_api: PlayedSendApi | None = None,
) -> Summary:
    return asyncio.run(
        play(
            script,
            target,
            concurrency=concurrency,
            timeout=timeout,
            on_done=on_done,
            send_api=send_api,
        )
    )
