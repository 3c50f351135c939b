"""Live updates in real Chromium tabs: time from a webhook POST to its row in every open tab.

For each database (SQLite, PostgreSQL), without and with REDIS_URL, and for each number of
tabs (10 and 50): a fresh database seeded with `viberwatch seed`, the production command
(`gunicorn -c gunicorn.conf.py 'app:create_app()'`) with 2 workers, one headless Chromium
(Playwright) with N tabs on the messages page, signed in with one session cookie. Once every
tab's live socket has had its hello answered, webhooks are posted one at a time (a receipt
for a new message each), the wall clock read just before each POST is sent and again when
it is answered: a few to warm up, each waited for in every tab, then the measured ones,
spaced by what the warm-up took so that each is measured on its own.

In each tab an init script records, with the page's wall clock
(`performance.timeOrigin + performance.now()`), when a WebSocket frame carrying
`<tr id="msg-<requestId>">` arrived (a 'message' listener added as the socket is made,
ahead of the htmx ws extension's) and when that row was in the DOM (a MutationObserver).
Where the process may open a packet socket (root), the loopback interface is watched too:
the kernel's timestamp of each frame as the server wrote it to each socket (the frames
decompressed, permessage-deflate), and of each wake-up the channel (Redis pub/sub or
PostgreSQL NOTIFY) delivered to a worker.

    python bench/live_tabs.py [--tabs 10 50] [--events 100] [--pace 0.1]
                              [--db sqlite postgresql] [--write-docs]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import socket
import statistics
import struct
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from ingest import cpu_seconds, server_pids  # noqa: E402
from live_latency import DOCS, redis_url  # noqa: E402
from report import write_between  # noqa: E402
from run import PG_SERVER, database, ensure_user, login, percentile, server, viberwatch  # noqa: E402

from support.bodies import DR, receipt  # noqa: E402
from support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

START, END = "<!-- live-tabs:start -->", "<!-- live-tabs:end -->"
TARGET_MS = 50.0
WORKERS = 2
SEED_MESSAGES = 5000
WARMUP = 6
# The measured webhooks' spacing: `pace` plus this many times the warm-up's time to the
# row in every tab (median); whether one still overlapped the next is counted afterwards.
SPACING_FACTOR = 1.2
# Each tab stands for a dashboard on a screen of its own: no tab is throttled as hidden.
BROWSER_ARGS = [
    *CHROMIUM_ARGS,
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
]

# Run in every tab before its own scripts: frame arrival and row insertion, by requestId.
WATCH = r"""(() => {
  const now = () => performance.timeOrigin + performance.now();
  const seen = (window.__liveTabs = { frames: {}, rows: {}, sockets: 0 });
  const ROW = /<tr\b[^>]*\bid="msg-([^"]+)"/g;
  const Native = window.WebSocket;
  class Watched extends Native {
    constructor(...args) {
      super(...args);
      seen.sockets += 1;
      this.addEventListener("message", (event) => {
        const t = now();
        if (typeof event.data !== "string") return;
        for (const m of event.data.matchAll(ROW)) {
          if (!(m[1] in seen.frames)) seen.frames[m[1]] = t;
        }
      });
    }
  }
  window.WebSocket = Watched;
  const note = (el, t) => {
    if (el.tagName === "TR" && el.id.startsWith("msg-")) {
      const rid = el.id.slice(4);
      if (!(rid in seen.rows)) seen.rows[rid] = t;
    }
  };
  new MutationObserver((records) => {
    const t = now();
    for (const record of records) {
      for (const node of record.addedNodes) {
        if (node.nodeType !== 1) continue;
        note(node, t);
        if (node.firstElementChild) node.querySelectorAll('tr[id^="msg-"]').forEach((el) => note(el, t));
      }
    }
  }).observe(document, { childList: true, subtree: true });
})();"""
READY = "() => !!(document.body && document.body.dataset.liveWorker)"
NOW = "() => performance.timeOrigin + performance.now()"
HAS_ROW = "(rid) => rid in window.__liveTabs.rows"
HAS_ROW_WAIT = 10.0
ALL_IN = "(rids) => rids.every((r) => r in window.__liveTabs.rows)"
COLLECT = """(rids) => ({
  frames: rids.map((r) => window.__liveTabs.frames[r] ?? null),
  rows: rids.map((r) => window.__liveTabs.rows[r] ?? null),
  sockets: window.__liveTabs.sockets,
  worker: document.body.dataset.liveWorker,
  visible: document.visibilityState === "visible",
})"""


def log(*args) -> None:
    print("[live tabs]", *args, file=sys.stderr, flush=True)


@contextmanager
def environment(**values: str | None):
    """os.environ with `values` set (None: unset) for the servers started meanwhile."""
    saved = {k: os.environ.get(k) for k in values}

    def put(items):
        for k, v in items.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    put(values)
    try:
        yield
    finally:
        put(saved)


# --- the wire: what the server writes, timed by the kernel ------------------------------------

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
ROW_ID = re.compile(rb'<tr\b[^>]*\bid="msg-([^"]+)"')


def port_filter(ports: list[int]) -> list[tuple[int, int, int, int]]:
    """A classic BPF program: IPv4 TCP segments sent from one of `ports` (the loopback
    interface shows each packet twice, as sent and as received: the sent copy only)."""
    prog: list[tuple[int, object, object, int]] = [
        (0x20, 0, 0, 0xFFFFF004),  # A = packet type
        (0x15, 0, "drop", PACKET_OUTGOING),
        (0x28, 0, 0, 12),  # A = ethertype
        (0x15, 0, "drop", 0x0800),
        (0x30, 0, 0, 23),  # A = IP protocol
        (0x15, 0, "drop", 6),
        (0x28, 0, 0, 20),  # A = fragment offset
        (0x45, "drop", 0, 0x1FFF),
        (0xB1, 0, 0, 14),  # X = IP header length
        (0x48, 0, 0, 14),  # A = TCP source port
        *[(0x15, "accept", 0, port) for port in ports],
        (0x06, 0, 0, 0),  # drop
        (0x06, 0, 0, 0x40000),  # accept
    ]
    at = {"drop": len(prog) - 2, "accept": len(prog) - 1}
    return [
        (code, *(at[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)), k)
        for i, (code, jt, jf, k) in enumerate(prog)
    ]


class Stream:
    """One WebSocket as the server sends it: frames parsed, text messages inflated."""

    def __init__(self, takeover: bool, seq: int):
        self.takeover = takeover
        self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buf = b""
        self.seq = seq  # the TCP sequence number of the next byte
        self.broken = False

    def feed(self, seq: int, data: bytes):
        """The text messages completed by the segment `data` starting at `seq`: a segment
        sent again is skipped, one missed (not captured) ends the decoding."""
        ahead = (seq - self.seq + 2**31) % 2**32 - 2**31
        if ahead > 0:
            self.broken = True
        if ahead + len(data) <= 0 or self.broken:
            return
        self.buf += data[-ahead:] if ahead else data
        self.seq = (seq + len(data)) % 2**32
        while len(self.buf) >= 2 and not self.broken:
            b0, b1 = self.buf[0], self.buf[1]
            size, at = b1 & 0x7F, 2
            if size == 126:
                if len(self.buf) < 4:
                    return
                size, at = struct.unpack_from(">H", self.buf, 2)[0], 4
            elif size == 127:
                if len(self.buf) < 10:
                    return
                size, at = struct.unpack_from(">Q", self.buf, 2)[0], 10
            if len(self.buf) < at + size:
                return
            body, self.buf = self.buf[at : at + size], self.buf[at + size :]
            if b0 & 0x0F != 1:  # control frames (ping, close); the server sends no fragments
                continue
            if b0 & 0x40:
                if not self.takeover:
                    self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                try:
                    body = self.inflate.decompress(body + b"\x00\x00\xff\xff")
                except zlib.error:
                    self.broken = True
                    return
            yield body


class Wire(threading.Thread):
    """Frames carrying a message row, per socket, and the wake-up channel's deliveries, as
    the kernel timed them leaving the server (and Redis or PostgreSQL) on the loopback."""

    def __init__(self, server_port: int, wake_port: int | None, wake_mark: bytes | None):
        super().__init__(daemon=True)
        self.server_port, self.wake_port, self.wake_mark = server_port, wake_port, wake_mark
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 512 << 20)
        program = port_filter([p for p in (server_port, wake_port) if p])
        self._program = ctypes.create_string_buffer(
            b"".join(struct.pack("HBBI", *insn) for insn in program)
        )
        self.sock.setsockopt(
            socket.SOL_SOCKET,
            SO_ATTACH_FILTER,
            struct.pack("HP", len(program), ctypes.addressof(self._program)),
        )
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        self.streams: dict[int, Stream] = {}
        self.frames: dict[str, dict[int, float]] = {}  # requestId -> {socket: time}
        self.wakes: list[float] = []
        self.dropped = 0

    @classmethod
    def open(cls, *args) -> Wire | None:
        try:
            wire = cls(*args)
        except OSError as exc:  # not root: no packet socket, no wire figures
            log(f"no packet capture ({exc}); the wire columns stay empty")
            return None
        wire.start()
        return wire

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                data, ancillary, _, address = self.sock.recvmsg(1 << 18, 64)
            except TimeoutError:
                continue
            if address[2] != PACKET_OUTGOING:
                continue
            at = None
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    at = sec + nsec / 1e9
            self.packet(at or time.time(), data)

    def packet(self, at: float, data: bytes) -> None:
        if len(data) < 34 or data[12:14] != b"\x08\x00" or data[23] != 6:
            return
        ip = 14
        tcp = ip + (data[ip] & 0x0F) * 4
        end = ip + struct.unpack_from(">H", data, ip + 2)[0]
        src, dst, seq = struct.unpack_from(">HHI", data, tcp)
        start = tcp + (data[tcp + 12] >> 4) * 4
        payload = data[start:end]
        if not payload:
            return
        if src == self.wake_port:
            if self.wake_mark in payload:
                self.wakes.append(at)
            return
        if src != self.server_port:
            return
        stream = self.streams.get(dst)
        if stream is None:
            if not payload.startswith(b"HTTP/1.1 101"):
                return  # a plain HTTP connection: pages, webhooks
            head, _, rest = payload.partition(b"\r\n\r\n")
            takeover = b"server_no_context_takeover" not in head.lower()
            stream = self.streams[dst] = Stream(takeover, seq + len(payload) - len(rest))
            seq, payload = stream.seq, rest
        for message in stream.feed(seq, payload):
            for rid in ROW_ID.findall(message):
                self.frames.setdefault(rid.decode(), {}).setdefault(dst, at)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        _, self.dropped = struct.unpack(
            "II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        )
        self.sock.close()

    @property
    def broken(self) -> int:
        return sum(s.broken for s in self.streams.values())


# --- one configuration ---------------------------------------------------------------------


def fresh_database(kind: str) -> str:
    url = database(kind, "bench_live_tabs", fresh=True)
    viberwatch(url, "db", "upgrade", quiet=True)
    viberwatch(url, "seed", "--messages", str(SEED_MESSAGES), "--random-seed", "1", quiet=True)
    ensure_user(url)
    return url


def clock_offset(page) -> tuple[float, float]:
    """The tab's clock minus this process's (seconds), from the quickest of 3 round trips,
    and that round trip."""
    best = (0.0, float("inf"))
    for _ in range(3):
        before = time.time()
        seen = page.evaluate(NOW) / 1000
        after = time.time()
        if after - before < best[1]:
            best = (seen - (before + after) / 2, after - before)
    return best


def post(http: httpx.Client) -> tuple[str, float, float]:
    """A receipt for a new message: its requestId, when it was sent and when answered."""
    rid = uuid.uuid4().hex
    body = json.dumps(receipt(rid, "success")).encode()
    headers = {"Content-Type": "application/json"}
    sent = time.time()
    r = http.post(DR, content=body, headers=headers)
    answered = time.time()
    r.raise_for_status()
    return rid, sent, answered


def measure(kind: str, with_redis: str | None, tabs: int, events: int, pace: float) -> dict:
    url = fresh_database(kind)
    channel = f"viberwatch_live_tabs_{uuid.uuid4().hex[:8]}"
    # The wake-up as the channel delivers it to a worker: its name, in a Redis pub/sub
    # message or a PostgreSQL NotificationResponse (SQLite's file watch sends nothing).
    if with_redis:
        wake_port = urlsplit(with_redis).port or 6379
    elif kind == "postgresql":
        wake_port = urlsplit(PG_SERVER).port or 5432
    else:
        wake_port = None
    with (
        environment(REDIS_URL=with_redis, VIBERWATCH_LIVE_CHANNEL=channel),
        server(url, workers=WORKERS, with_pid=True) as (base, master),
        sync_playwright() as pw,
    ):
        client = login(base)
        cookies = [{"name": c.name, "value": c.value, "url": base} for c in client.cookies.jar]
        wire = Wire.open(urlsplit(base).port, wake_port, channel.encode())
        try:
            others = descendants(os.getpid())
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            context = browser.new_context(base_url=base)
            context.add_cookies(cookies)
            context.add_init_script(WATCH)
            began = time.monotonic()
            pages = []
            for _ in range(tabs):
                page = context.new_page()
                page.goto("/", wait_until="commit")
                pages.append(page)
            for page in pages:
                page.wait_for_function(READY, timeout=180_000)
            opened = time.monotonic() - began
            log(f"{tabs} tabs live in {opened:.1f} s")
            browser_pids = [p for p in descendants(os.getpid()) if p not in others]
            owners = socket_owners(urlsplit(base).port, server_pids(master))
            offsets = [clock_offset(page) for page in pages]
            probe = context.new_cdp_session(pages[0])
            probe.send("Performance.enable")

            sent: list[tuple[str, float, float]] = []
            with httpx.Client(base_url=base, timeout=30) as http:
                # Warm-up webhooks, each waited for in every tab: how long a fan-out takes sets
                # the spacing of the measured ones, which are then not waited for (no polling of
                # the tabs while they work).
                settled = []
                for _ in range(WARMUP):
                    rid, t0, _ = post(http)
                    shown(pages, rid)
                    settled.append(time.time() - t0)
                    time.sleep(pace)
                spacing = pace + SPACING_FACTOR * statistics.median(settled[1:])
                cpu = usage(master, browser_pids)
                main_thread = thread_metrics(probe)
                due = time.monotonic()
                for _ in range(events):
                    sent.append(post(http))
                    due += spacing
                    time.sleep(max(0.0, due - time.monotonic()))
                cpu = {k: v - cpu[k] for k, v in usage(master, browser_pids).items()}
                main_thread = {k: v - main_thread[k] for k, v in thread_metrics(probe).items()}
            rids = [rid for rid, _, _ in sent]
            deadline = time.monotonic() + 15
            for page in pages:
                while not page.evaluate(ALL_IN, rids) and time.monotonic() < deadline:
                    page.wait_for_timeout(100)
            seen = [page.evaluate(COLLECT, rids) for page in pages]
            browser.close()
            client.close()
        finally:
            if wire is not None:
                wire.stop()
    return summary(sent, seen, wire, owners, offsets, opened, cpu, main_thread, tabs)


def thread_metrics(cdp) -> dict[str, float]:
    """Seconds the tab's main thread has spent so far: in tasks, and in script, layout and
    style within them (Chrome DevTools' Performance.getMetrics)."""
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return {
        "task": metrics["TaskDuration"],
        "script": metrics["ScriptDuration"],
        "layout": metrics["LayoutDuration"],
        "style": metrics["RecalcStyleDuration"],
    }


def shown(pages, rid: str) -> None:
    """Wait until the row of `rid` is in every tab (or HAS_ROW_WAIT has passed)."""
    deadline = time.monotonic() + HAS_ROW_WAIT
    for page in pages:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            page.wait_for_function(HAS_ROW, arg=rid, polling=10, timeout=left * 1000)
        except PlaywrightTimeout:
            return


def descendants(pid: int) -> set[int]:
    """Every process under `pid`."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, of in parents.items():
            if of == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def usage(master: int, browser: list[int]) -> dict[str, float]:
    """CPU seconds so far of the server's processes, of the browser's tabs (renderers) and
    of the browser's other processes (browser, GPU, network service...)."""
    kinds: dict[str, list[int]] = {"renderers": [], "browser": []}
    for pid in browser:
        try:
            renderer = b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        kinds["renderers" if renderer else "browser"].append(pid)
    return {
        "server": cpu_seconds(server_pids(master)),
        **{kind: cpu_seconds(pids) for kind, pids in kinds.items()},
    }


def socket_owners(port: int, pids: list[int]) -> dict[int, int]:
    """Which of `pids` holds each connection accepted on `port`, by the peer's port."""
    peers = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[2] != "00000000:0000":
                peers[f"socket:[{fields[9]}]"] = int(fields[2].split(":")[1], 16)
    owners = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                peer = peers.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if peer is not None:
                owners[peer] = pid
    return owners


def summary(sent, seen, wire: Wire | None, owners, offsets, opened, cpu, main_thread, tabs) -> dict:
    dom, frame, swap, dom_by_event = [], [], [], {}
    for tab in seen:
        for (rid, t0, _), f, r in zip(sent, tab["frames"], tab["rows"], strict=True):
            if r is not None:
                dom.append(r - t0 * 1000)
                dom_by_event.setdefault(rid, []).append(r - t0 * 1000)
            if f is not None:
                frame.append(f - t0 * 1000)
            if f is not None and r is not None:
                swap.append(r - f)
    events = len(sent)
    gaps = [b[1] - a[1] for a, b in zip(sent, sent[1:], strict=False)]
    last = [max(dom_by_event.get(rid, [0.0])) / 1000 + t0 for rid, t0, _ in sent]
    result = {
        "overlapped": sum(end >= nxt for end, (_, nxt, _) in zip(last, sent[1:], strict=False)),
        "tabs": tabs,
        "events": events,
        "spacing_ms": statistics.median(gaps) * 1000 if gaps else 0.0,
        "cpu_ms": {k: v / events * 1000 for k, v in cpu.items()},
        "main_thread_ms": {k: v / events * 1000 for k, v in main_thread.items()},
        "opened_s": opened,
        "dom": dom,
        "frame": frame,
        "swap": swap,
        "answered": [(a - t0) * 1000 for _, t0, a in sent],
        "missing": sum(r is None for tab in seen for r in tab["rows"]),
        "events_missing": sum(len(dom_by_event.get(rid, [])) < tabs for rid, _, _ in sent),
        "workers": " + ".join(
            str(n) for n in sorted(Counter(tab["worker"] for tab in seen).values(), reverse=True)
        ),
        "reconnects": sum(tab["sockets"] - 1 for tab in seen),
        "hidden": sum(not tab["visible"] for tab in seen),
        "offset_ms": statistics.median(o for o, _ in offsets) * 1000,
        "offset_rtt_ms": statistics.median(rtt for _, rtt in offsets) * 1000,
        "wire": None,
    }
    if wire is not None:
        out, first, between, within, wakes = [], [], [], [], []
        starts = [t0 for _, t0, _ in sent] + [float("inf")]
        for i, (rid, t0, _) in enumerate(sent):
            written = wire.frames.get(rid, {})
            out += [(t - t0) * 1000 for t in written.values()]
            if written:
                first.append((min(written.values()) - t0) * 1000)
            by_worker: dict[int, list[float]] = {}
            for peer, t in written.items():
                by_worker.setdefault(owners.get(peer, 0), []).append(t)
            firsts = sorted(min(times) for times in by_worker.values())
            if len(firsts) > 1:
                between.append((firsts[-1] - firsts[0]) * 1000)
            if by_worker:
                within.append(max(max(ts) - min(ts) for ts in by_worker.values()) * 1000)
            woke = [w for w in wire.wakes if t0 <= w < starts[i + 1]]
            if woke:
                wakes.append((min(woke) - t0) * 1000)
        result["wire"] = {
            "out": out,
            "first": first,
            "between": between,
            "within": within,
            "wakes": wakes,
            "sockets": len(wire.streams),
            "broken": wire.broken,
            "dropped": wire.dropped,
            "missing": tabs * events - len(out),
        }
    return result


# --- the report ----------------------------------------------------------------------------


def ms(values: list[float], p: float = 50) -> str:
    return f"{percentile(values, p):.1f}" if values else "–"


def verdict(value: float) -> str:
    return "met" if value < TARGET_MS else f"missed (+{value - TARGET_MS:.1f} ms)"


PARTS = {
    "answer": "the webhook's answer (POST to 200)",
    "server": "the server after the answer until it wrote the frame",
    "browser": "the browser from the server's write to the frame's message event in the tab",
    "swap": "the swap (frame to row in the DOM)",
}


def parts(r: dict, p: float) -> dict[str, float]:
    """Where an event's time goes at percentile `p` of each step, in ms, in the order it is
    spent (each the difference of two percentiles; without the wire, the server's part and
    the browser's are one)."""
    answered = percentile(r["answered"], p)
    frame = percentile(r["frame"], p)
    w = r["wire"]
    written = percentile(w["out"], p) if w and w["out"] else None
    return {
        "answer": answered,
        "server": (written if written is not None else frame) - answered,
        "browser": frame - written if written is not None else float("nan"),
        "swap": percentile(r["swap"], p),
    }


def markdown(rows: list[tuple[str, str, dict]], meta: dict) -> str:
    lines = [
        f"Measured {meta['date']} by `make bench-live-tabs` (`bench/live_tabs.py --events "
        f"{meta['events']} --pace {meta['pace']:g} --tabs {' '.join(map(str, meta['tabs']))}`) "
        f"on {meta['machine']}; load average {meta['load_start']:.1f} at the start and "
        f"{meta['load_end']:.1f} at the end ({meta['minutes']:.0f} minutes). One headless "
        f"{meta['chromium']} with every tab, the server (2 workers and the ingest committer), "
        "the database, Redis and the benchmark itself all share those cores. Each row: a fresh "
        f"database with {SEED_MESSAGES:,} seeded messages, {WARMUP} warm-up webhooks, then "
        f"{meta['events']} measured ones over one keep-alive connection (so one worker takes "
        f"them all), spaced {meta['pace'] * 1000:.0f} ms plus {SPACING_FACTOR:g} times the "
        "median time a warm-up webhook took to be in every tab (the warm-up ones waited for "
        "by polling each tab; the measured ones not, so that nothing but the pages runs in "
        "the tabs meanwhile; a measured one whose row reached its last tab after the next "
        "POST counts as overlapping); times "
        "in ms after the POST was sent, over every tab and event. The tabs' clocks minus the "
        f"benchmark's: median {meta['offset_ms']:+.2f} ms (each read in a round trip of "
        f"{meta['offset_rtt_ms']:.1f} ms, median), not corrected for.",
        "",
        "| database | wake-up | tabs | row in DOM p50 | p95 | target p95 < 50 ms | max | "
        "webhook answered p50 | frame in tab p50 / p95 | frame → DOM p50 / p95 | "
        "events missing in a tab (rows) |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for db, wake, r in rows:
        p95 = percentile(r["dom"], 95) if r["dom"] else float("inf")
        lines.append(
            f"| {db} | {wake} | {r['tabs']} | {ms(r['dom'])} | {ms(r['dom'], 95)} | "
            f"{verdict(p95)} | {max(r['dom'], default=float('nan')):.1f} | {ms(r['answered'])} | "
            f"{ms(r['frame'])} / {ms(r['frame'], 95)} | {ms(r['swap'])} / {ms(r['swap'], 95)} | "
            f"{r['events_missing']} ({r['missing']}) |"
        )
    lines += [
        "",
        "Where the time goes (ms after the POST; medians unless marked):",
        "",
    ]
    lines += [
        "| database | wake-up | tabs | webhook answered | wake-up delivered to a worker | first "
        "frame written | other worker's first frame, later by p50 / p95 | first to last socket "
        "of a worker p50 / p95 | every socket's frame written p50 / p95 | frame in tab p50 / "
        "p95 | row in DOM p50 / p95 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for db, wake, r in rows:
        w = r["wire"] or {k: [] for k in ("out", "first", "between", "within", "wakes")}
        lines.append(
            f"| {db} | {wake} | {r['tabs']} | {ms(r['answered'])} | {ms(w['wakes'])} | "
            f"{ms(w['first'])} | {ms(w['between'])} / {ms(w['between'], 95)} | "
            f"{ms(w['within'])} / {ms(w['within'], 95)} | {ms(w['out'])} / {ms(w['out'], 95)} | "
            f"{ms(r['frame'])} / {ms(r['frame'], 95)} | {ms(r['dom'])} / {ms(r['dom'], 95)} |"
        )
    lines += [
        "",
        "CPU time per webhook (all processes of each kind, over the measured webhooks), and how "
        "the run went:",
        "",
        "| database | wake-up | tabs | server (workers, committer) | Chromium tabs (per tab) | "
        "Chromium's other processes | first tab's main thread, wall time in tasks (script / "
        "layout / style) "
        "| webhooks every | overlapping the next | tabs per worker | all tabs live after |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for db, wake, r in rows:
        cpu, main = r["cpu_ms"], r["main_thread_ms"]
        lines.append(
            f"| {db} | {wake} | {r['tabs']} | {cpu['server']:.1f} ms | {cpu['renderers']:.0f} ms "
            f"({cpu['renderers'] / r['tabs']:.1f} ms) | {cpu['browser']:.1f} ms | "
            f"{main['task']:.1f} ms ({main['script']:.1f} / {main['layout']:.1f} / "
            f"{main['style']:.1f}) | {r['spacing_ms']:.0f} ms | {r['overlapped']} | "
            f"{r['workers']} | {r['opened_s']:.0f} s |"
        )
    lines += ["", *where_the_time_goes(rows)]
    notes = []
    for db, wake, r in rows:
        odd = []
        if r["reconnects"]:
            odd.append(f"{r['reconnects']} reconnects")
        if r["hidden"]:
            odd.append(f"{r['hidden']} tabs not visible")
        w = r["wire"]
        if w and (w["missing"] or w["dropped"] or w["broken"]):
            odd.append(
                f"on the wire {r['tabs'] * r['events'] - w['missing']} of "
                f"{r['tabs'] * r['events']} frames seen ({w['dropped']} packets dropped by the "
                f"capture, {w['broken']} sockets not decoded to the end)"
            )
        if odd:
            notes.append(f"{db}, {wake}, {r['tabs']} tabs: {', '.join(odd)}.")
    if meta["failed"]:
        notes.append(f"Not measured (the run failed): {'; '.join(meta['failed'])}.")
    if notes:
        lines += ["", " ".join(notes)]
    return "\n".join(lines)


def where_the_time_goes(rows: list[tuple[str, str, dict]]) -> list[str]:
    measured = [(db, wake, r) for db, wake, r in rows if r["dom"] and r["swap"]]
    lines = [
        "The same split step by step (p50 / p95 of each step's end minus that of the one "
        "before, so the steps add up to the row in the DOM only roughly):",
        "",
        "| database | wake-up | tabs | "
        + " | ".join(PARTS[k].split(" (")[0] for k in PARTS)
        + " | row in DOM |",
        "| --- | --- | ---: |" + " ---: |" * (len(PARTS) + 1),
    ]
    for db, wake, r in measured:
        mid, tail = parts(r, 50), parts(r, 95)
        lines.append(
            f"| {db} | {wake} | {r['tabs']} | "
            + " | ".join(f"{mid[k]:.1f} / {tail[k]:.1f}" for k in PARTS)
            + f" | {ms(r['dom'])} / {ms(r['dom'], 95)} |"
        )
    text = []
    for p, what in ((50, "median"), (95, "p95")):
        biggest: dict[str, list[str]] = {}
        for db, wake, r in measured:
            split = {k: v for k, v in parts(r, p).items() if v == v}
            biggest.setdefault(max(split, key=split.get), []).append(
                f"{db} + {wake}, {r['tabs']} tabs"
            )
        ranked = sorted(biggest.items(), key=lambda kv: -len(kv[1]))
        lead, where = ranked[0]
        values = [parts(r, p)[lead] for _, _, r in measured]
        sentence = (
            f"At the {what}, the biggest part is {PARTS[lead]}: in {len(where)} of "
            f"{len(measured)} configurations ({min(values):.1f} to {max(values):.1f} ms over all)."
        )
        if len(ranked) > 1:
            sentence += " Elsewhere: " + "; ".join(
                f"{PARTS[k]} in {', '.join(w)}" for k, w in ranked[1:]
            )
            sentence += "."
        text.append(sentence)
    cores = os.cpu_count() or 1
    for tabs in sorted({r["tabs"] for _, _, r in measured}):
        cpu = [
            (r["cpu_ms"]["renderers"] + r["cpu_ms"]["browser"], r["cpu_ms"]["server"])
            for _, _, r in measured
            if r["tabs"] == tabs
        ]
        browser = [b for b, _ in cpu]
        text.append(
            f"With {tabs} tabs Chromium took {min(browser):.0f} to {max(browser):.0f} ms of CPU "
            f"per webhook ({min(browser) / tabs:.1f} to {max(browser) / tabs:.1f} ms per tab), "
            f"the server {min(s for _, s in cpu):.0f} to {max(s for _, s in cpu):.0f} ms: at "
            f"least {min(browser) / cores:.0f} ms of all {cores} cores for the tabs alone."
        )
    return [*lines, "", " ".join(text)]


def machine() -> str:
    with open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
    return f"{os.cpu_count()} cores, {kb / 1024**2:.0f} GiB"


def chromium_version() -> str:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        version = browser.version
        browser.close()
    return f"Chromium {version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--pace", type=float, default=0.1, help="seconds between posts")
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    redis = redis_url()
    if redis is None:
        log("no Redis answers: the rows with REDIS_URL are left out")
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    load_start, began = os.getloadavg()[0], time.monotonic()
    rows, failed = [], []
    for kind in args.db:
        for wake_redis in [None, redis] if redis else [None]:
            wake = "Redis" if wake_redis else ("data_version" if kind == "sqlite" else "NOTIFY")
            for tabs in args.tabs:
                log(f"{names[kind]}, {wake}, {tabs} tabs")
                try:
                    r = measure(kind, wake_redis, tabs, args.events, args.pace)
                except Exception as exc:  # the other configurations still run
                    log(f"failed: {type(exc).__name__}: {exc}")
                    failed.append(f"{names[kind]}, {wake}, {tabs} tabs ({type(exc).__name__})")
                    continue
                rows.append((names[kind], wake, r))
                log(
                    f"row in DOM p50 {ms(r['dom'])} p95 {ms(r['dom'], 95)} max "
                    f"{max(r['dom'], default=float('nan')):.1f}; answered {ms(r['answered'])}; "
                    f"frame {ms(r['frame'])}/{ms(r['frame'], 95)}; swap {ms(r['swap'])}/"
                    f"{ms(r['swap'], 95)}; missing {r['missing']}; every "
                    f"{r['spacing_ms']:.0f} ms, {r['overlapped']} overlapping"
                )
    if not rows:
        raise SystemExit("nothing was measured")
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "events": args.events,
        "pace": args.pace,
        "tabs": args.tabs,
        "machine": machine(),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "minutes": (time.monotonic() - began) / 60,
        "chromium": chromium_version(),
        "offset_ms": statistics.median(r["offset_ms"] for _, _, r in rows),
        "offset_rtt_ms": statistics.median(r["offset_rtt_ms"] for _, _, r in rows),
        "failed": failed,
    }
    text = markdown(rows, meta)
    print(text)
    if args.write_docs:
        write_between(DOCS, START, END, text)


if __name__ == "__main__":
    main()
