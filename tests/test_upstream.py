"""The send proxy's client to NXCLOUD (app/sending/upstream.py), against a local HTTP/1.1
server: a send reuses a kept-alive connection, never one the server has closed or one idle for
too long, the answer comes back as it was (a gzip coding undone, as httpx did), and failures
are told apart: 504 for a timeout, 502 for the rest."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.sending.upstream import Upstream, UpstreamError, UpstreamTimeout


class Played:
    """What the server does with the next calls, and what it saw."""

    def __init__(self):
        self.connections = 0
        self.calls: list[dict] = []
        self.close = False  # answer with Connection: close
        self.gzip = False
        self.delay = 0.0
        self.status = 200


@pytest.fixture
def played():
    state = Played()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            state.connections += 1

        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
            time.sleep(state.delay)
            answer = b'{"code":0,"data":{"requestId":"r1"}}'
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            if state.gzip:
                answer = gzip.compress(answer)
                self.send_header("Content-Encoding", "gzip")
            if state.close:
                self.send_header("Connection", "close")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/api/viber/mt"
    state.server = server
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_send_reuses_the_kept_connection_and_arrives_as_it_was(played):
    upstream = Upstream()
    body = b'{"phone": "+79990001122",\n "text": "\xd0\x9f"}'
    headers = {"Content-Type": "application/json", "accessKey": "k", "sign": "s", "ts": "1"}
    try:
        for _ in range(3):
            answer = upstream.post(played.url, body, headers, 5)
            assert answer.status == 200
            assert answer.content == b'{"code":0,"data":{"requestId":"r1"}}'
            assert answer.content_type == "application/json;charset=UTF-8"
        assert played.connections == 1
        call = played.calls[0]
        assert call["body"] == body and call["path"] == "/api/viber/mt"
        for name, value in headers.items():
            assert call["headers"][name] == value
        assert call["headers"]["Host"] == played.url.split("/")[2]
    finally:
        upstream.close()


def test_connection_close_a_closed_or_an_old_connection_is_not_reused(played):
    upstream = Upstream(keepalive=0.3)
    try:
        played.close = True
        upstream.post(played.url, b"{}", {}, 5)
        assert upstream.idle_count() == 0
        played.close = False
        upstream.post(played.url, b"{}", {}, 5)
        upstream.post(played.url, b"{}", {}, 5)
        assert played.connections == 2
        time.sleep(0.4)  # idle past keepalive: a new connection
        upstream.post(played.url, b"{}", {}, 5)
        assert played.connections == 3
        # The server closes the kept connection (shutdown of its socket by the peer).
        (conn, _) = upstream._idle[("http", "127.0.0.1", played.server.server_port)][0]
        conn.sock.shutdown(socket.SHUT_RD)  # reads EOF, as after the server's FIN
        upstream.post(played.url, b"{}", {}, 5)
        assert played.connections == 4
        assert len(played.calls) == 5  # no call was sent twice
    finally:
        upstream.close()


def test_an_answer_is_given_back_decoded_and_whatever_its_status(played):
    upstream = Upstream()
    try:
        played.gzip = True
        answer = upstream.post(played.url, b"{}", {}, 5)
        assert answer.content == b'{"code":0,"data":{"requestId":"r1"}}'
        played.gzip, played.status = False, 500
        assert upstream.post(played.url, b"{}", {}, 5).status == 500
    finally:
        upstream.close()


def test_too_slow_is_a_timeout_and_unreachable_an_error(played):
    upstream = Upstream()
    try:
        played.delay = 1.0
        with pytest.raises(UpstreamTimeout):
            upstream.post(played.url, b"{}", {}, 0.2)
        assert upstream.idle_count() == 0  # a connection that timed out is not kept
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nobody listens here
        with pytest.raises(UpstreamError) as refused:
            upstream.post(f"http://127.0.0.1:{port}/api/viber/mt", b"{}", {}, 2)
        assert refused.value.name == "ConnectError"
        with pytest.raises(UpstreamError) as scheme:
            upstream.post("ftp://127.0.0.1/api/viber/mt", b"{}", {}, 2)
        assert scheme.value.name == "UnsupportedProtocol"
    finally:
        upstream.close()


def test_a_proxy_named_by_the_environment_is_used(played, monkeypatch):
    """HTTP_PROXY applies to NXCLOUD's address (httpx honours it): the send goes through it."""
    monkeypatch.setenv("HTTP_PROXY", played.url.rsplit("/api", 1)[0])
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("no_proxy", raising=False)
    upstream = Upstream()
    try:
        answer = upstream.post("http://nxcloud.invalid/api/viber/mt", b"{}", {}, 5)
        assert answer.status == 200
        assert played.calls[0]["path"] == "http://nxcloud.invalid/api/viber/mt"
    finally:
        upstream.close()
