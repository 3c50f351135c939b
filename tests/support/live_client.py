"""A real WebSocket client of /ws for the tests and the benchmark: it says hello as
static/live.js does and parses each push into its cursor and its top-level fragments."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser

import websocket

META_RE = re.compile(r"^<!--live (\{.*?\})-->")


@dataclass
class Fragment:
    tag: str
    attrs: dict
    ids: list[str]  # ids of the element and its descendants, in document order
    html: str


@dataclass
class Push:
    meta: dict
    fragments: list[Fragment] = field(default_factory=list)
    raw: str = ""

    @property
    def cursor(self) -> int:
        return self.meta["cursor"]

    def ids(self) -> list[str]:
        return [i for f in self.fragments for i in f.ids]

    def rows(self) -> list[tuple[str, str]]:
        """(request id, "insert" | "update" | "leave") for every message row in the push:
        rows travel in a tbody for #messages-body, marked data-live="update" or "leave"
        unless they are new."""
        out = []
        for f in self.fragments:
            if not f.attrs.get("hx-swap-oob", "").startswith("afterbegin:#messages-body"):
                continue
            mode = f.attrs.get("data-live") or "insert"
            out.extend((i[4:], mode) for i in f.ids if i.startswith("msg-"))
        return out

    def contacts(self) -> list[tuple[str, str]]:
        """(phone, "top" | "update") for every conversations row in the push."""
        out = []
        for f in self.fragments:
            if f.attrs.get("hx-swap-oob", "").startswith("afterbegin:#contacts-body"):
                mode = f.attrs.get("data-live") or "top"
                out.extend((i[8:], mode) for i in f.ids if i.startswith("contact-"))
        return out


class _Splitter(HTMLParser):
    """Split a push into top-level elements, collecting the ids inside each."""

    VOID = {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    }

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.text = text
        self.depth = 0
        self.current: Fragment | None = None
        self.start = 0
        self.fragments: list[Fragment] = []
        self.lines = [0]
        for line in text.splitlines(keepends=True):
            self.lines.append(self.lines[-1] + len(line))

    def _offset(self) -> int:
        line, col = self.getpos()
        return self.lines[line - 1] + col

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.depth == 0:
            self.current = Fragment(tag, attrs, [], "")
            self.start = self._offset()
        if attrs.get("id") and self.current is not None:
            self.current.ids.append(attrs["id"])
        if tag not in self.VOID:
            self.depth += 1
        elif self.depth == 0:
            self._close()

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        self.depth -= 1
        if self.depth == 0 and self.current is not None:
            self._close(end=True)

    def _close(self, end=False):
        stop = self.text.find(">", self._offset()) + 1 if end else len(self.text)
        self.current.html = self.text[self.start : stop]
        self.fragments.append(self.current)
        self.current = None


def parse_push(text: str, before: list[str] = ()) -> Push:
    match = META_RE.match(text)
    assert match, f"a push ends with a frame that starts with its cursor: {text[:80]!r}"
    fragments = []
    for frame in [*before, text]:
        splitter = _Splitter(frame)
        splitter.feed(frame)
        splitter.close()
        fragments.extend(splitter.fragments)
    return Push(json.loads(match.group(1)), fragments, "".join([*before, text]))


class LiveClient:
    """One dashboard's socket."""

    def __init__(
        self,
        base_url: str,
        cookie: str | None = None,
        *,
        page: str = "messages",
        cursor: int | None = None,
        filters: str = "",
        phone: str | None = None,
        request_id: str | None = None,
        rows: list[str] | None = None,
        feed: bool = False,
        timeout: float = 10.0,
    ):
        url = base_url.replace("http://", "ws://", 1) + "/ws"
        self.ws = websocket.create_connection(url, cookie=cookie, timeout=timeout)
        self.hello = {
            "type": "hello",
            "cursor": cursor,
            "page": page,
            "filters": filters,
            "phone": phone,
            "requestId": request_id,
            "rows": rows or [],
            "feed": feed,
        }
        self.ws.send(json.dumps(self.hello))
        self.first = self.recv(timeout)
        self.cursor = self.first.cursor

    def recv(self, timeout: float = 10.0) -> Push:
        # Table rows come in frames of their own before the frame with the cursor.
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            self.ws.settimeout(max(0.01, deadline - time.monotonic()))
            frame = self.ws.recv()
            if META_RE.match(frame):
                break
            frames.append(frame)
        push = parse_push(frame, frames)
        self.cursor = max(getattr(self, "cursor", 0) or 0, push.cursor)
        return push

    def until(self, done: Callable[[list[Push]], bool], timeout: float = 10.0) -> list[Push]:
        """Pushes received until `done(all so far)` holds; fails after `timeout` seconds."""
        got: list[Push] = []
        deadline = time.monotonic() + timeout
        while not done(got):
            left = deadline - time.monotonic()
            assert left > 0, (
                f"no push satisfied the test in {timeout} s; got {[p.raw[:300] for p in got]}"
            )
            try:
                got.append(self.recv(left))
            except websocket.WebSocketTimeoutException:
                continue
        return got

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


def post(base_url: str, path: str, body: dict | bytes, headers: dict | None = None) -> int:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        base_url + path,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=30) as response:
        response.read()
        return response.status
