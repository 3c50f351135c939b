"""The production server under slow clients: requests that trickle in hold no thread, too slow
ones are cut off with 408, and every ordinary way a request arrives (in pieces, chunked,
after 100-continue, pipelined on a kept-alive connection, larger than the read-ahead) is
still served. Through real sockets against the real gunicorn command."""

import json
import re
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from app.records.models import RawBody, db
from support.fixtures import fixture_bytes
from support.servers import production_server

BODY = fixture_bytes("dr_seen")


@pytest.fixture
def serve(app, app_config, tmp_path):
    """The production command, one worker with two threads, on the test's database."""

    def start(**env):
        base = {
            "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
            "VIBERWATCH_SECRET_KEY": app_config["SECRET_KEY"],
            "WEB_CONCURRENCY": "1",
            "GUNICORN_THREADS": "2",
        }
        return production_server({**base, **env}, tmp_path / "gunicorn.log", unset=("REDIS_URL",))

    return start


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def head(length: int, extra: str = "") -> bytes:
    return (
        f"POST /webhooks/viber/dr HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or goes quiet for a second."""
    sock.settimeout(1)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data
        if not chunk:
            return data
        data += chunk


def status_lines(data: bytes) -> list[bytes]:
    # A body ("success") runs straight into the next answer's status line.
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", data)


class Trickle:
    """Connections that send a request head one byte every `every` seconds until stopped."""

    def __init__(self, url: str, count: int, every: float):
        self.sockets = [connect(url) for _ in range(count)]
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        text = b"POST /webhooks/viber/dr HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 1000
        for i in range(len(text)):
            for s in self.sockets:
                try:
                    s.send(text[i : i + 1])
                except OSError:
                    pass
            if self.stop.wait(self.every):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        for s in self.sockets:
            s.close()


@pytest.mark.parametrize("worker", ["configured", "gthread"])
def test_slow_clients_hold_no_thread(serve, worker):
    """Twenty connections trickling bytes, two threads: /healthz and a webhook still answer.
    gunicorn's own gthread worker, run the same way, does not: the test can tell."""
    env = {"GUNICORN_HEAD_TIMEOUT": "60"}
    if worker == "gthread":
        env["GUNICORN_CMD_ARGS"] = "--worker-class gthread"
    with serve(**env) as url, Trickle(url, 20, 0.2):
        time.sleep(1)  # every slow connection has sent some bytes
        try:
            health = httpx.get(url + "/healthz", timeout=5).status_code
            webhook = httpx.post(
                url + "/webhooks/viber/dr",
                content=BODY,
                timeout=5,
                headers={"Content-Type": "application/json"},
            ).status_code
        except httpx.TimeoutException:
            health = webhook = None
    if worker == "configured":
        assert (health, webhook) == (200, 200)
    else:
        assert health is None


def test_a_head_too_slow_to_arrive_is_cut_off_with_408(serve):
    with serve(GUNICORN_HEAD_TIMEOUT="1") as url:
        sock = connect(url)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")
        time.sleep(2.5)
        data = answer(sock)
        sock.close()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_a_body_too_slow_to_arrive_is_cut_off_with_408(app, serve):
    with serve(GUNICORN_BODY_TIMEOUT="1") as url:
        sock = connect(url)
        sock.sendall(head(len(BODY)) + BODY[:10])
        time.sleep(2.5)
        data = answer(sock)
        sock.close()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    with app.app_context():
        assert db.session.execute(db.select(db.func.count(RawBody.id))).scalar_one() == 0


def test_requests_arriving_in_every_ordinary_way_are_served(app, serve):
    with serve(GUNICORN_BODY_BUFFER="1024") as url:
        # In pieces, within the timeouts.
        sock = connect(url)
        whole = head(len(BODY), "Connection: close\r\n") + BODY
        for i in range(0, len(whole), 40):
            sock.sendall(whole[i : i + 40])
            time.sleep(0.02)
        assert status_lines(answer(sock)) == [b"HTTP/1.1 200 OK"]
        sock.close()

        # Chunked, in pieces.
        sock = connect(url)
        sock.sendall(
            b"POST /webhooks/viber/dr HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        body = json.dumps({**json.loads(BODY), "requestId": "chunked-1"}).encode()
        for i in range(0, len(body), 50):
            piece = body[i : i + 50]
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            time.sleep(0.02)
        sock.sendall(b"0\r\n\r\n")
        assert status_lines(answer(sock)) == [b"HTTP/1.1 200 OK"]
        sock.close()

        # Expect: 100-continue: one interim answer, then the body, then the real answer.
        sock = connect(url)
        body = json.dumps({**json.loads(BODY), "requestId": "continue-1"}).encode()
        sock.sendall(head(len(body), "Expect: 100-continue\r\nConnection: close\r\n"))
        assert answer(sock) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert status_lines(answer(sock)) == [b"HTTP/1.1 200 OK"]
        sock.close()

        # Two requests on one kept-alive connection, the second sent with the first.
        sock = connect(url)
        second = json.dumps({**json.loads(BODY), "requestId": "pipelined-2"}).encode()
        sock.sendall(head(len(BODY)) + BODY + head(len(second), "Connection: close\r\n") + second)
        assert status_lines(answer(sock)) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
        sock.close()

        # A body longer than the read-ahead (1 KiB here): its thread reads the rest.
        big = json.dumps({**json.loads(BODY), "requestId": "big-1", "padding": "p" * 5000}).encode()
        response = httpx.post(
            url + "/webhooks/viber/dr", content=big, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 200
    with app.app_context():
        ids = set(db.session.execute(db.select(RawBody.request_id)).scalars())
    assert {"chunked-1", "continue-1", "pipelined-2", "big-1"} <= ids


@pytest.mark.parametrize("loop", ["true", "false"])
def test_a_transfer_coding_that_is_not_chunked_is_answered_at_once(serve, loop):
    """`xchunked` is no `chunked`: an unknown coding is 501 and a framing that does not end
    with chunked is 400, as soon as the head is in, never after a body wait (408)."""
    with serve(VIBERWATCH_WEBHOOK_EVENT_LOOP=loop, GUNICORN_BODY_TIMEOUT="30") as url:
        got = {}
        for coding in ("xchunked", "chunkedx", "gzip", "chunked, identity", "foo, chunked"):
            sock = connect(url)
            sock.sendall(
                b"POST /webhooks/viber/dr HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: "
                + coding.encode()
                + b"\r\n\r\n5\r\nhello\r\n"
            )
            # No more is sent: the answer cannot wait for a body's end.
            started = time.monotonic()
            codes = [line.split(b" ")[1] for line in status_lines(answer(sock))]
            got[coding] = (codes, time.monotonic() - started < 5)
            sock.close()
        # Real chunked framing still works, with a listed coding before it.
        sock = connect(url)
        body = json.dumps({**json.loads(BODY), "requestId": f"gzip-chunked-{loop}"}).encode()
        sock.sendall(
            b"POST /webhooks/viber/dr HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: identity, chunked\r\nConnection: close\r\n\r\n"
            + f"{len(body):x}\r\n".encode()
            + body
            + b"\r\n0\r\n\r\n"
        )
        assert status_lines(answer(sock)) == [b"HTTP/1.1 200 OK"]
        sock.close()
    assert got == {
        "xchunked": ([b"501"], True),
        "chunkedx": ([b"501"], True),
        "gzip": ([b"400"], True),
        "chunked, identity": ([b"400"], True),
        "foo, chunked": ([b"501"], True),
    }, got
