"""Webhooks answered in the gunicorn worker's event loop (app/server/loop.py), through the
real production command and raw sockets: no request thread is needed, the answers are the
view's byte for byte, a kept-alive connection gets its answers in order, a committer that
stalls past INGEST_WAIT_TIMEOUT gets its bodies answered 503 (and still applied), and bodies
waiting on a committer that is killed are served by request threads."""

import json
import os
import re
import signal
import socket
import time
from urllib.parse import urlsplit

import pytest

from app.records.models import Message, RawBody, db
from support.bodies import encoded, receipt, reply
from support.fixtures import fixture_bytes
from support.servers import committer_pid, production_process

TOKEN = "loop-token"
PHONE = "79990001122"


@pytest.fixture
def serve(app_config, tmp_path):
    """The production command, one worker, on the test's database; `threads` request threads."""

    def start(threads: int = 2, **env):
        base = {
            "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
            "VIBERWATCH_SECRET_KEY": app_config["SECRET_KEY"],
            "VIBERWATCH_WEBHOOK_TOKEN": TOKEN,
            "WEB_CONCURRENCY": "1",
            "GUNICORN_THREADS": str(threads),
        }
        log = tmp_path / f"gunicorn-{len(list(tmp_path.glob('gunicorn-*')))}.log"
        return production_process({**base, **env}, log, unset=("REDIS_URL",))

    return start


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def post(path: str, body: dict | bytes, close: bool = False, token: str = TOKEN) -> bytes:
    """The raw request of a webhook (a dict as JSON, bytes as they are)."""
    body = body if isinstance(body, bytes) else encoded(body)
    return (
        f"POST {path}?token={token} HTTP/1.1\r\nHost: test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    ).encode() + body


def answers(sock: socket.socket, count: int, seconds: float = 10) -> list[bytes]:
    """`count` whole answers (each with its Content-Length body) from one connection."""
    sock.settimeout(seconds)
    data = b""
    out = []
    while len(out) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            length = int(re.search(rb"(?i)content-length: *(\d+)", data[:end]).group(1))
            if len(data) >= end + 4 + length:
                out.append(data[: end + 4 + length])
                data = data[end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(out)} answers"
        data += chunk
    return out


def without_date(answer: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


def kinds(tag: str) -> list[bytes]:
    """One request of each kind of answer, for messages of their own (`tag`)."""
    return [
        post("/webhooks/viber/dr", receipt(f"loop-{tag}-1")),
        post("/webhooks/viber/dr", receipt(f"loop-{tag}-1")),  # a duplicate
        post("/webhooks/viber/message", reply(f"loop-{tag}-1", PHONE, "Thanks!", appkey="APP")),
        post("/webhooks/viber/dr", b'{"status": "delivered"'),  # not JSON
        post("/webhooks/viber/dr", json.dumps({"status": "delivered"}).encode()),  # no requestId
        post("/webhooks/viber/dr", receipt(f"loop-{tag}-2", "bogus")),
        post("/webhooks/viber/dr", receipt(f"loop-{tag}-3"), token="wrong"),  # refused
        post("/webhooks/viber/dr", fixture_bytes("dr_seen")),
    ]


def kept(fragment: str) -> list[RawBody]:
    return [r for r in db.session.query(RawBody) if fragment.encode() in r.body]


def exchange(url: str, requests: list[bytes]) -> list[bytes]:
    out = []
    for raw in requests:
        with connect(url) as sock:
            sock.sendall(raw)
            out.append(without_date(answers(sock, 1)[0]))
    return out


def test_answers_are_the_views_byte_for_byte(serve, app):
    with serve(VIBERWATCH_WEBHOOK_EVENT_LOOP="true") as (url, _):
        in_loop = exchange(url, kinds("a"))
    with serve(VIBERWATCH_WEBHOOK_EVENT_LOOP="false") as (url, _):
        from_threads = exchange(url, kinds("b"))
    statuses = [a.split(b"\r\n", 1)[0] for a in in_loop]
    assert statuses == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 400 BAD REQUEST",
        b"HTTP/1.1 422 UNPROCESSABLE ENTITY",
        b"HTTP/1.1 422 UNPROCESSABLE ENTITY",
        b"HTTP/1.1 401 UNAUTHORIZED",
        b"HTTP/1.1 200 OK",
    ], in_loop
    assert b"X-Content-Type-Options: nosniff" in in_loop[0]
    assert in_loop[0].endswith(b"\r\n\r\nsuccess")
    assert in_loop == from_threads
    with app.app_context():
        for tag in ("a", "b"):
            message = db.session.get(Message, f"loop-{tag}-1")
            assert message is not None and message.status == "delivered"
            assert message.replies_count == 1
            # Every body kept, the refused one too.
            assert len(kept(f"loop-{tag}-")) == 5


def test_a_webhook_needs_no_request_thread(serve, app):
    """The one request thread is held by a body that never finishes arriving; webhooks are
    still answered (from the loop) at once."""
    env = {"GUNICORN_BODY_BUFFER": "1024", "VIBERWATCH_WEBHOOK_EVENT_LOOP": "true"}
    with serve(threads=1, **env) as (url, _):
        stuck = connect(url)
        head = post("/webhooks/viber/dr", b"x" * 5000)[:-5000]
        stuck.sendall(head + b"x" * 2000)  # past the read-ahead: a thread reads the rest
        time.sleep(0.5)
        with connect(url) as sock:
            sock.sendall(post("/webhooks/viber/dr", receipt("loop-free-1")))
            (answer,) = answers(sock, 1, seconds=5)
        stuck.close()
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"success")
    with app.app_context():
        assert db.session.get(Message, "loop-free-1").status == "delivered"


def test_pipelined_webhooks_are_answered_in_order(serve, app):
    with serve(VIBERWATCH_WEBHOOK_EVENT_LOOP="true") as (url, _):
        with connect(url) as sock:
            burst = [
                post("/webhooks/viber/dr", receipt("loop-pipe-1", "success")),
                post("/webhooks/viber/dr", b"not json"),
                post("/webhooks/viber/dr", receipt("loop-pipe-1", "seen")),
                post(
                    "/webhooks/viber/message", reply("loop-pipe-1", PHONE, "Thanks!", appkey="APP")
                ),
            ]
            sock.sendall(b"".join(burst))
            got = answers(sock, 4)
            # Still kept alive: one more, then the client closes it.
            sock.sendall(post("/webhooks/viber/dr", receipt("loop-pipe-2"), close=True))
            (last,) = answers(sock, 1)
            assert sock.recv(10) == b""
    assert [a.split(b"\r\n", 1)[0] for a in got] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 400 BAD REQUEST",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
    ]
    assert b"Connection: keep-alive" in got[0]
    assert b"Connection: close" in last and last.endswith(b"success")
    with app.app_context():
        assert db.session.get(Message, "loop-pipe-1").status == "seen"
        assert db.session.get(Message, "loop-pipe-2").status == "delivered"


def test_a_stalled_committer_gets_503_and_the_body_is_still_applied(serve, app):
    env = {"VIBERWATCH_INGEST_WAIT_TIMEOUT": "1", "VIBERWATCH_WEBHOOK_EVENT_LOOP": "true"}
    with serve(**env) as (url, proc):
        pid = committer_pid(proc.pid)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with connect(url) as sock:
                sock.sendall(post("/webhooks/viber/dr", receipt("loop-slow-1")))
                (late,) = answers(sock, 1)
        finally:
            os.kill(pid, signal.SIGCONT)
        # The committer answers it now, and that answer is not taken for the next body's.
        with connect(url) as sock:
            sock.sendall(post("/webhooks/viber/dr", b"not json"))
            (bad,) = answers(sock, 1)
            sock.sendall(post("/webhooks/viber/dr", receipt("loop-slow-2")))
            (good,) = answers(sock, 1)
    assert late.startswith(b"HTTP/1.1 503")
    assert json.loads(late.split(b"\r\n\r\n", 1)[1])["field"] == "body"
    assert bad.startswith(b"HTTP/1.1 400") and good.startswith(b"HTTP/1.1 200")
    with app.app_context():
        assert db.session.get(Message, "loop-slow-1").status == "delivered"
        assert db.session.get(Message, "loop-slow-2").status == "delivered"


def test_bodies_waiting_on_a_killed_committer_are_served_by_threads(serve, app):
    with serve(VIBERWATCH_WEBHOOK_EVENT_LOOP="true") as (url, proc):
        pid = committer_pid(proc.pid)
        os.kill(pid, signal.SIGSTOP)
        socks = []
        for i in range(3):
            sock = connect(url)
            sock.sendall(post("/webhooks/viber/dr", receipt(f"loop-kill-{i}")))
            socks.append(sock)
        time.sleep(0.5)  # all three are with the stopped committer
        os.kill(pid, signal.SIGKILL)
        got = [answers(sock, 1)[0] for sock in socks]
        for sock in socks:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 200 OK") for a in got), got
    with app.app_context():
        for i in range(3):
            assert db.session.get(Message, f"loop-kill-{i}").status == "delivered"
            assert len(kept(f"loop-kill-{i}")) == 1


def test_a_webhook_with_a_dashboard_cookie_gets_the_same_answer_and_no_cookie(serve, app):
    """A webhook is NXCLOUD's call, not a dashboard's: one that carries a signed-in session's
    cookie gets no Set-Cookie, from the loop as from a thread, and the same bytes."""
    from support.accounts import create_test_user
    from test_live_workers import session_cookie

    create_test_user(app)
    got = {}
    for loop in ("true", "false"):
        with serve(VIBERWATCH_WEBHOOK_EVENT_LOOP=loop) as (url, _):
            cookie = session_cookie(url)
            raw = post("/webhooks/viber/dr", receipt(f"loop-cookie-{loop}"), close=True)
            head, rest = raw.split(b"\r\n", 1)
            got[loop] = exchange(url, [head + f"\r\nCookie: {cookie}".encode() + b"\r\n" + rest])[0]
    assert got["true"].startswith(b"HTTP/1.1 200 OK"), got["true"]
    assert b"Set-Cookie" not in got["true"] and b"Set-Cookie" not in got["false"]
    assert got["true"] == got["false"]
