"""Live updates: one WebSocket, /ws, that the dashboard pages open through the htmx ws
extension. The page says hello (its cursor and what it shows); the server answers with
what the page missed, then pushes HTML out of band as the activity log grows.
"""

from __future__ import annotations

import os
from socket import SHUT_RDWR

from flask import Blueprint, Flask, current_app, g, render_template, request
from flask_login import current_user
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from ..auth.sessions import session_id_of
from ..core.services import services
from ..records.models import Activity, db
from .hub import Client, Hub, head_id, hub_of
from .push import HelloError, catch_up, compose, parse_hello

bp = Blueprint("live", __name__)
sock = Sock()

# Pages that connect: the cursor they start from is read before their own queries, so a
# change committed while they render is pushed again rather than missed.
LIVE_BLUEPRINTS = ("dashboard", "conversations")

# Close codes the htmx ws extension reconnects on.
CLOSE_TRY_AGAIN = 1013
CLOSE_RESTART = 1012
# A hello refused for what it says: static/live.js does not try it again.
CLOSE_POLICY = 1008
# Seconds to wait for the peer's answer to our close frame before ending the connection.
CLOSE_ANSWER_WAIT = 2.0


def init_app(app: Flask) -> None:
    app.config["SOCK_SERVER_OPTIONS"] = {
        "max_message_size": app.config["LIVE_MAX_MESSAGE"],
        **app.config["SOCK_SERVER_OPTIONS"],
    }
    sock.init_app(app)
    app.register_blueprint(bp)
    # Eager but idle: it only listens for commits until a socket arrives.
    hub_of(app)


def stop(app: Flask) -> None:
    """Stop this process's live threads and close its sockets (pages reconnect)."""
    hub = services(app).live
    if hub is not None:
        hub.stop()


@bp.before_app_request
def _page_cursor() -> None:
    if request.method == "GET" and request.blueprint in LIVE_BLUEPRINTS:
        g.live_cursor = head_id()


@bp.app_template_global()
def live_cursor() -> int:
    """The activity id the page was rendered at; its socket resumes from there."""
    cursor = g.get("live_cursor")
    return head_id() if cursor is None else cursor


@bp.app_template_global()
def live_feed() -> list[Activity]:
    """The latest activity up to the page's cursor, newest first, for the feed panel."""
    return list(
        db.session.execute(
            db.select(Activity)
            .where(Activity.id <= live_cursor())
            .order_by(Activity.id.desc())
            .limit(current_app.config["LIVE_FEED_CAP"])
        ).scalars()
    )


@sock.route("/ws", bp=bp)
def socket(ws):
    """The live channel of a dashboard page: a hello, then pushes until it closes."""
    app = current_app._get_current_object()
    signed_in = session_id_of(current_user)
    # The handshake's own session (login checks) must not hold a database connection
    # for the hours a socket stays open.
    db.session.remove()
    try:
        hello = ws.receive(timeout=app.config["LIVE_HELLO_TIMEOUT"])
        if hello is None:
            # A page that was slow to speak (a throttled tab) is welcome to try again;
            # 1008 would tell it that its hello is refused for good.
            ws.close(CLOSE_TRY_AGAIN, "no hello in time: reconnect")
            return
        try:
            cursor, page = parse_hello(hello)
        except HelloError as exc:
            ws.close(CLOSE_POLICY, str(exc)[:120])
            return
        serve(hub_of(app), ws, cursor, page, signed_in)
    finally:
        _end(ws)


def _end(ws) -> None:
    """Finish the closing handshake and end the connection, with nothing after the close frame.

    The development server (werkzeug) writes an HTTP response once the view returns, even on
    a connection that is a WebSocket by then; a browser reads those bytes as a broken frame
    ("Invalid frame header"), reports 1006 instead of our close code and reconnects. Once the
    peer has answered the close (or had CLOSE_ANSWER_WAIT to), shutting the socket down makes
    that write fail as a dropped connection, which werkzeug ignores. gunicorn writes nothing
    after a socket, and its worker closes the connection itself.
    """
    if ws.connected:
        try:
            ws.close()
        except ConnectionClosed:
            pass
    if ws.mode != "werkzeug":
        return
    # The socket's reader thread ends on the peer's close frame (or when the peer goes away).
    ws.thread.join(CLOSE_ANSWER_WAIT)
    try:
        ws.sock.shutdown(SHUT_RDWR)
    except OSError:  # the peer is gone already
        pass


def _send(ws, *frames: str) -> None:
    for frame in frames:
        ws.send(frame)


def serve(hub: Hub, ws, cursor: int | None, page, signed_in: str | None = None) -> None:
    cap = int(hub.app.config["LIVE_FEED_CAP"])
    client, upto = hub.attach(page, cursor, signed_in)
    try:
        push, reload = (
            catch_up(page, client.cursor, upto, cap) if cursor is not None else (None, False)
        )
        if reload:
            _send(ws, _meta({"cursor": upto, "reload": True}))
            return
        hello = {"hello": True, "pid": os.getpid()}
        client.cursor = max(client.cursor, upto)
        if push is not None:
            push.cursor = client.cursor
            _send(ws, *push.frames(hello))
        else:
            _send(ws, _meta({"cursor": client.cursor, **hello}))
        db.session.remove()
        _pump(hub, ws, client, cap)
    except ConnectionClosed:
        pass
    finally:
        hub.detach(client)
        db.session.remove()


def _pump(hub: Hub, ws, client: Client, cap: int) -> None:
    """Send what the tailer queued for this socket until either side closes."""
    while ws.connected and not client.closed:
        client.wake.wait(1.0)
        client.wake.clear()
        if client.signed_out:
            # No reconnect: the page's sign-in has ended (htmx retries only 1006, 1012, 1013).
            ws.close(CLOSE_POLICY, "signed out")
            return
        if client.overflow:
            ws.close(CLOSE_TRY_AGAIN, "behind: reconnect and catch up")
            return
        _read_incoming(ws, client)
        batches = client.take()
        if not batches:
            continue
        try:
            push = compose(client.page, client.cursor, batches, cap)
            if push.cursor == client.cursor:
                continue
            client.cursor = push.cursor
            _send(ws, *batches[-1].frames_for(push))
        finally:
            db.session.remove()
    if client.closed and ws.connected and hub.stopped.is_set():
        ws.close(CLOSE_RESTART, "server restart")


def _read_incoming(ws, client: Client) -> None:
    """A page that changed its filters in place says hello again with what it shows now."""
    while True:
        text = ws.receive(timeout=0)
        if text is None:
            return
        try:
            _, page = parse_hello(text)
        except HelloError:
            continue
        client.page = page


def _meta(meta: dict) -> str:
    return render_template("partials/_live_push.html", part="rest", meta=meta, push=None)
