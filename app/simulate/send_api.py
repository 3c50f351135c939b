"""NXCLOUD's Viber send API, played by the simulator, so a demo can send from a thread.

It answers `POST /api/viber/mt` like NXCLOUD (a requestId, or an error code when the
signature or the body is wrong), then has the player push that message's receipts to
viberwatch. It is for demos and trials only: nothing is delivered to anyone.
"""

from __future__ import annotations

import hmac
import json
import random
import threading
import time
import uuid
from collections.abc import Callable

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from ..core import signing
from ..sending.nxcloud import ACTION, BIZ_TYPE, SEND_PATH
from .script import Event, sent_message_events


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
        self.lock = threading.Lock()
        self.server = make_server(host, port, self.wsgi, threaded=True)
        self.url = f"http://{host}:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, headers, body: bytes) -> dict:
        """NXCLOUD's answer to one call: code 0 with a requestId, or the documented error."""
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
            events = sent_message_events(
                self.rng, request_id, phone, appkey=str(appkey), zone=self.zone, speed=self.speed
            )
            self.played.append(events)
        self.schedule(events)
        return {"code": 0, "message": "Success", "data": {"requestId": request_id}}

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
