"""NXCLOUD's Viber send API, played by the simulator, so a demo can send from a thread.

It answers `POST /api/viber/mt` like NXCLOUD (a requestId, or an error code when the
signature or the body is wrong), then has the player push that message's receipts to
viberwatch. It is for demos and trials only: nothing is delivered to anyone.

The simulator's own sends (a script played through viberwatch's send proxy) are announced
first (`expect`): they are answered the same way, and their receipts are the script's, pushed
by the player for the requestId answered here. A probe (`probe_body`) is answered with its
nonce and an error code, so the simulator learns that the proxy forwards here, before any
message, without anything being registered.
"""

from __future__ import annotations

import hmac
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from ..core import signing
from ..sending.nxcloud import ACTION, BIZ_TYPE, SEND_PATH
from .script import Event, sent_message_events


class QuietHandler(WSGIRequestHandler):
    """No line per request: the demo's terminal belongs to the simulator's progress."""

    def log_request(self, *args, **kwargs) -> None:
        pass


class PlayedSendApi:
    def __init__(
        self,
        host: str,
        port: int,
        schedule: Callable[[tuple[Event, ...]], None],
        *,
        access_key: str | None = None,
        secret: str | None = None,
        zone: str = "UTC+08:00",
        seed: int | None = None,
        speed: float = 1.0,
    ):
        self.schedule = schedule  # must be safe to call from the server's threads
        self.access_key = access_key
        self.secret = secret
        self.zone = zone
        self.rng = random.Random(seed)
        self.speed = speed
        self.played: list[tuple[Event, ...]] = []  # the events of every accepted send
        self.expected: Counter[bytes] = Counter()  # bodies of the simulator's own sends
        self.scripted: list[str] = []  # the requestIds its own sends were answered with
        self.probes: dict[bytes, str] = {}
        self.lock = threading.Lock()
        self.server = make_server(
            host, port, self.wsgi, threaded=True, request_handler=QuietHandler
        )
        self.url = f"http://{host}:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, headers, body: bytes) -> dict:
        """NXCLOUD's answer to one call: code 0 with a requestId, or the documented error."""
        with self.lock:
            nonce = self.probes.pop(body, None)
        if nonce is not None:
            return {"code": 1002, "message": "Bad parameters", "data": {"probe": nonce}}
        if self.secret:
            if any(not headers.get(h) for h in ("accessKey", "ts", "bizType", "action", "sign")):
                return {"code": 1001, "message": "Missing parameters"}
            expected = signing.sign(
                headers["accessKey"],
                headers["action"],
                headers["bizType"],
                headers["ts"],
                body,
                self.secret,
            )
            if headers["accessKey"] != self.access_key or not hmac.compare_digest(
                headers["sign"], expected
            ):
                return {"code": 1003, "message": "Invalid signature"}
            if not headers["ts"].isdigit() or abs(int(headers["ts"]) - time.time() * 1000) > 60_000:
                return {"code": 1004, "message": "Timestamp expired"}
            if headers["bizType"] != BIZ_TYPE or headers["action"] != ACTION:
                return {"code": 1002, "message": "Bad parameters"}
        try:
            data = json.loads(body)
            phone = data["phone"]
            text = data["messageData"]["text"]
            appkey = data["appkey"]
        except (ValueError, KeyError, TypeError):
            return {"code": 1001, "message": "Missing parameters"}
        if not isinstance(phone, str) or not phone.strip() or not isinstance(text, str) or not text:
            return {"code": 1002, "message": "Bad parameters"}
        request_id = uuid.uuid4().hex
        with self.lock:
            if self.expected[body] > 0:
                self.expected[body] -= 1
                self.scripted.append(request_id)
                return {"code": 0, "message": "Success", "data": {"requestId": request_id}}
            events = sent_message_events(
                self.rng, request_id, phone, appkey=str(appkey), zone=self.zone, speed=self.speed
            )
            self.played.append(events)
        self.schedule(events)
        return {"code": 0, "message": "Success", "data": {"requestId": request_id}}

    def expect(self, body: bytes) -> None:
        """The simulator is about to send this body through the proxy: answer it without
        playing receipts of its own (the script has them)."""
        with self.lock:
            self.expected[body] += 1

    def probe_body(self, appkey: str) -> tuple[bytes, str]:
        """A send no NXCLOUD would deliver (no phone), answered here with its nonce."""
        nonce = uuid.uuid4().hex
        body = json.dumps(
            {
                "appkey": appkey,
                "phone": "",
                "functionType": "text",
                "messageData": {"rateType": "Transactional", "text": f"simulator probe {nonce}"},
            },
            separators=(",", ":"),
        ).encode()
        with self.lock:
            self.probes[body] = nonce
        return body, nonce

    def wsgi(self, environ, start_response):
        request = Request(environ)
        if request.method != "POST" or request.path != SEND_PATH:
            return Response("not found", status=404)(environ, start_response)
        answer = self.answer(request.headers, request.get_data())
        return Response(json.dumps(answer), mimetype="application/json")(environ, start_response)

    def start(self) -> PlayedSendApi:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(5)
        self.server.server_close()
