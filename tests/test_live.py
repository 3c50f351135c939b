"""Live updates over real WebSocket connections to a real server."""

import json
import threading
import uuid

import pytest

from app.live.hub import hub_of, read_events
from app.live.push import HelloError, Page, PushBatch, compose, parse_hello
from support.bodies import receipt, reply
from support.live_client import LiveClient, post

DR = "/webhooks/viber/dr"
REPLY = "/webhooks/viber/message"


@pytest.fixture
def cookie(app, client):
    """The session cookie of the signed-in test client, as a browser would send it."""
    name = app.config.get("SESSION_COOKIE_NAME", "session")
    return f"{name}={client.get_cookie(name).value}"


@pytest.fixture
def connect(live_server, cookie):
    opened = []

    def make(**kwargs):
        c = LiveClient(live_server.url, cookie, **kwargs)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


def rid():
    return uuid.uuid4().hex


def test_hello_answers_with_cursor_and_worker(connect, live_server):
    post(live_server.url, DR, receipt(rid()))
    c = connect(cursor=None)
    assert c.first.meta["hello"] is True and c.first.meta["pid"] > 0
    assert c.first.cursor == 1 and c.first.fragments == []


def test_new_row_then_update_in_place_with_counters_and_feed(connect, live_server):
    c = connect(cursor=0, feed=True)
    a = rid()
    assert post(live_server.url, DR, receipt(a, "delivered")) == 200
    pushes = c.until(lambda ps: any(r == (a, "insert") for p in ps for r in p.rows()))
    html = "".join(p.raw for p in pushes)
    assert 'data-status="delivered"' in html and 'id="counters"' in html
    assert any(i.startswith("act-") for p in pushes for i in p.ids())
    post(live_server.url, DR, receipt(a, "seen"))
    pushes = c.until(lambda ps: any(r == (a, "update") for p in ps for r in p.rows()))
    row = next(f for p in pushes for f in p.fragments if f"msg-{a}" in f.ids)
    # Through the list's body, marked as an update: the page replaces the row it shows.
    assert row.tag == "tbody" and row.attrs.get("data-live") == "update"
    assert f'<tr id="msg-{a}"' in row.html and 'data-status="seen"' in row.html


def test_pushed_fields_are_escaped(connect, live_server):
    c = connect(cursor=0, page="thread", phone="79100000030")
    a = rid()
    post(live_server.url, REPLY, reply(a, "79100000030", "<script>alert(1)</script>"))
    pushes = c.until(lambda ps: any(i.startswith("reply-") for p in ps for i in p.ids()))
    html = "".join(p.raw for p in pushes)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_filtered_page_gets_only_matching_new_rows(connect, live_server):
    c = connect(cursor=0, filters="?status=seen")
    other, wanted = rid(), rid()
    post(live_server.url, DR, receipt(other, "delivered"))
    post(live_server.url, DR, receipt(wanted, "seen"))
    pushes = c.until(lambda ps: any(r[0] == wanted for p in ps for r in p.rows()))
    assert all(r[0] != other for p in pushes for r in p.rows())
    assert (wanted, "insert") in [r for p in pushes for r in p.rows()]


def test_reconnect_from_cursor_gets_what_it_missed_exactly_once(connect, live_server):
    first = connect(cursor=0, feed=True)
    a, b = rid(), rid()
    post(live_server.url, DR, receipt(a, "success"))
    first.until(lambda ps: any(r[0] == a for p in ps for r in p.rows()))
    cursor = first.cursor
    first.close()
    # Missed while away: three events, two messages.
    post(live_server.url, DR, receipt(a, "delivered"))
    post(live_server.url, DR, receipt(b, "success"))
    post(live_server.url, DR, receipt(b, "delivered"))
    again = connect(cursor=cursor, feed=True, rows=[a])
    catch_up = again.first
    assert catch_up.cursor == cursor + 3
    feed_ids = [i for i in catch_up.ids() if i.startswith("act-")]
    assert sorted(feed_ids) == sorted(f"act-{n}" for n in range(cursor + 1, cursor + 4))
    assert sorted(catch_up.rows()) == sorted([(a, "update"), (b, "insert")])
    # Then only what is new, nothing again.
    post(live_server.url, DR, receipt(b, "seen"))
    later = again.until(lambda ps: any(p.cursor == cursor + 4 for p in ps))
    ids = [i for p in later for i in p.ids() if i.startswith("act-")]
    assert ids == [f"act-{cursor + 4}"]
    assert [r for p in later for r in p.rows()] == [(b, "update")]


def test_client_ahead_of_this_process_skips_what_it_has(connect, live_server):
    a = rid()
    post(live_server.url, DR, receipt(a, "success"))
    post(live_server.url, DR, receipt(a, "delivered"))
    c = connect(cursor=2, feed=True)
    assert c.first.cursor == 2 and c.first.fragments == []
    post(live_server.url, DR, receipt(a, "seen"))
    pushes = c.until(lambda ps: any(p.cursor == 3 for p in ps))
    assert [i for p in pushes for i in p.ids() if i.startswith("act-")] == ["act-3"]


def test_thread_and_message_pages(connect, live_server):
    a, phone = rid(), "79100000031"
    post(live_server.url, "/webhooks/viber/dr", receipt(a, "success"))
    thread = connect(cursor=None, page="thread", phone=phone)
    message = connect(cursor=None, page="message", request_id=a)
    post(live_server.url, REPLY, reply(a, phone, "hello back"))
    pushes = thread.until(lambda ps: any(i.startswith("reply-") for p in ps for i in p.ids()))
    html = "".join(p.raw for p in pushes)
    assert 'hx-swap-oob="beforeend:#thread"' in html and "hello back" in html
    # The reply taught the message its phone: its bubble joins the thread too.
    assert any(i == f"thread-msg-{a}" for p in pushes for i in p.ids())
    post(live_server.url, DR, receipt(a, "delivered"))
    pushes = message.until(
        lambda ps: sum(i.startswith("receipt-") for p in ps for i in p.ids()) >= 1
    )
    assert 'hx-swap-oob="beforeend:#timeline"' in "".join(p.raw for p in pushes)
    pushes = thread.until(
        lambda ps: any(
            f"thread-msg-{a}" in f.ids and 'data-status="delivered"' in f.html
            for p in ps
            for f in p.fragments
        )
    )


def close_frame(ws):
    """(code, reason) of the close frame the server sent."""
    import websocket

    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(data[:2], "big"), data[2:].decode()


def test_bad_hello_is_refused_with_a_reason(live_server, cookie):
    import websocket

    ws = websocket.create_connection(
        live_server.url.replace("http", "ws") + "/ws", cookie=cookie, timeout=5
    )
    ws.send(json.dumps({"cursor": -1}))
    code, reason = close_frame(ws)
    assert code == 1008 and reason.startswith("cursor:")


def ends_cleanly(ws) -> bytes:
    """Answer the server's close frame as a browser does, then read until the server ends the
    connection: whatever arrives after the close frame is returned (nothing, when clean)."""
    ws.send_close()
    rest = b""
    while True:
        chunk = ws.sock.recv(4096)
        if not chunk:
            return rest
        rest += chunk


def test_a_refused_hello_is_followed_by_nothing_on_the_development_server(live_server, cookie):
    """werkzeug's server writes a response when the view returns; on a socket that response
    comes after the close frame, and Chromium takes it for a broken frame (code 1006) and
    reconnects instead of reading the 1008."""
    import websocket

    ws = websocket.create_connection(
        live_server.url.replace("http", "ws") + "/ws", cookie=cookie, timeout=5
    )
    ws.send(json.dumps({"page": "messages", "filters": "status=read"}))
    code, reason = close_frame(ws)
    assert code == 1008 and reason.startswith("filters:")
    assert ends_cleanly(ws) == b""


def test_a_server_restart_is_followed_by_nothing_either(app, live_server, cookie):
    from app.live import views as live

    c = LiveClient(live_server.url, cookie, cursor=None)
    live.stop(app)
    assert close_frame(c.ws)[0] == 1012
    assert ends_cleanly(c.ws) == b""


def test_a_socket_silent_past_the_hello_timeout_is_asked_to_try_again(app, live_server, cookie):
    """Slow is not wrong: 1013 (reconnect), not the 1008 that a page does not retry."""
    import websocket

    app.config["LIVE_HELLO_TIMEOUT"] = 0.3
    ws = websocket.create_connection(
        live_server.url.replace("http", "ws") + "/ws", cookie=cookie, timeout=5
    )
    assert close_frame(ws) == (1013, "no hello in time: reconnect")
    assert ends_cleanly(ws) == b""


def test_socket_requires_login(live_server):
    import websocket

    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(live_server.url.replace("http", "ws") + "/ws", timeout=5)


@pytest.mark.parametrize(
    "hello, field",
    [
        ("not json", "hello"),
        ({"cursor": "x"}, "cursor"),
        ({"page": "admin"}, "page"),
        ({"filters": "status=read"}, "filters"),
        ({"page": "thread"}, "phone"),
        ({"rows": "a"}, "rows"),
    ],
)
def test_hello_validation(hello, field):
    with pytest.raises(HelloError, match=f"^{field}"):
        parse_hello(hello if isinstance(hello, str) else json.dumps(hello))


def test_a_burst_is_coalesced_to_one_row_per_message(app, live_server):
    ids = [rid() for _ in range(5)]
    for status in ("success", "delivered", "seen"):
        for a in ids:
            post(live_server.url, DR, receipt(a, status))
    with app.test_request_context("/"):
        events = read_events(0)
        assert len(events) == 15
        batches = [PushBatch.load(events[i : i + 4]) for i in range(0, 15, 4)]
        page = Page(kind="messages", feed=True)
        push = compose(page, 0, batches, feed_cap=10)
        assert sorted(push.rows) == sorted(ids)
        assert all(
            mode == "insert" and 'data-status="seen"' in html for mode, html in push.rows.values()
        )
        assert len(push.feed) == 10 and push.cursor == 15


def test_slow_socket_overflows_without_delaying_others(app, connect, live_server):
    app.config["LIVE_QUEUE_BATCHES"] = 2
    fast = connect(cursor=None)
    hub = hub_of(app)
    hub.max_batches = 2
    stalled, _ = hub.attach(Page(kind="messages"), None)  # a socket whose sender never runs
    ids = [rid() for _ in range(6)]
    for a in ids:
        post(live_server.url, DR, receipt(a))
        fast.until(lambda ps, a=a: any(r[0] == a for p in ps for r in p.rows()))
    assert stalled.overflow and stalled.take() == []
    hub.detach(stalled)


def test_restart_closes_sockets_for_reconnect(app, live_server, cookie):
    from app.live import views as live

    c = LiveClient(live_server.url, cookie, cursor=None)
    live.stop(app)
    # 1012 "service restart": the htmx ws extension reconnects on it.
    assert close_frame(c.ws)[0] == 1012


def test_an_id_not_yet_committed_holds_the_cursor_back_until_it_is_given_up(app):
    """On PostgreSQL ids are taken before commit: 3 may commit after 4. The tailer waits
    for the gap before moving past it, then gives it up (a rolled-back transaction)."""
    import time

    from app.live.push import Event

    def ev(n):
        return Event(n, "receipt", "r", None, "seen", None, None, None)

    hub = hub_of(app)
    hub.gap_wait = 0.2
    hub.cursor = 2
    assert [e.id for e in hub._contiguous([ev(3), ev(5), ev(6)])] == [3]
    hub.cursor = 3
    assert hub._contiguous([ev(5), ev(6)]) == []
    time.sleep(0.25)
    assert [e.id for e in hub._contiguous([ev(5), ev(6)])] == [5, 6]


@pytest.mark.parametrize("size", [64 * 1024 + 1, 4 * 1024 * 1024])
def test_a_message_over_the_cap_closes_the_socket_as_it_arrives(app, live_server, cookie, size):
    """A hello (or any later message) larger than LIVE_MAX_MESSAGE is not read whole."""
    import websocket

    assert app.config["SOCK_SERVER_OPTIONS"]["max_message_size"] == 64 * 1024
    ws = websocket.create_connection(
        live_server.url.replace("http", "ws") + "/ws", cookie=cookie, timeout=30
    )

    def send():
        frame = websocket.ABNF.create_frame(
            '{"cursor": 0, "filters": "' + "x" * size + '"}', websocket.ABNF.OPCODE_TEXT
        )
        try:
            ws.sock.sendall(frame.format())
        except OSError:
            pass  # closed before all of it was written

    # The server stops reading at the cap, so a large message may not all be written; it is
    # written past the client's own lock, which its answer to the close frame needs.
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    # The raw frame: answering the close would wait behind the unfinished write.
    frame = ws.recv_frame()
    while frame.opcode != websocket.ABNF.OPCODE_CLOSE:
        frame = ws.recv_frame()
    assert int.from_bytes(frame.data[:2], "big") == 1009
    # A hello within the cap is still read.
    ok = LiveClient(live_server.url, cookie, filters="q=" + "y" * 100)
    assert ok.first.cursor == 0
    ok.close()
