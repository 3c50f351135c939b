"""A local stand-in for NXCLOUD's Viber send API, served over real HTTP for the tests.

It checks each call the way the documentation describes (signature over the exact body,
`ts` within 60 s, bizType 7, action mt, the documented body) with its own MD5, not
app/core/signing.py, and answers with a requestId or with any documented error code on demand.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import pytest
from werkzeug.wrappers import Request, Response

from .servers import LiveServer

ACCESS_KEY = "fake-access-key"
SECRET = "fake-secret"
APPKEY = "FakeApp1"
ERROR_CODES = (
    -1,
    1001,
    1002,
    1003,
    1004,
    1005,
    1100,
    1102,
    9000,
    9001,
    9002,
    9003,
    9004,
    9005,
    9999,
)


def documented_sign(access_key, action, biz_type, ts, body: bytes, secret) -> str:
    plain = f"accessKey={access_key}&action={action}&bizType={biz_type}&ts={ts}".encode()
    if body:
        plain += b"&body=" + body
    plain += f"&accessSecret={secret}".encode()
    return hashlib.md5(plain).hexdigest()


class FakeNxcloud:
    def __init__(self):
        self.calls: list[dict] = []  # every call: headers, body, answer
        self.sent: list[dict] = []  # the bodies it accepted, with their requestId
        self.next_codes: list[int] = []  # answer the next calls with these error codes
        self.delay = 0.0  # seconds to wait before answering (timeouts)
        # Called with the requestId of an accepted send before it is answered.
        self.before_answer = None
        self.server = LiveServer(self.wsgi)
        self.url = self.server.url

    def check(self, request: Request) -> int:
        """0 when the call is what the documentation asks for, else the code NXCLOUD gives."""
        h = request.headers
        body = request.get_data()
        if any(not h.get(name) for name in ("accessKey", "ts", "bizType", "action", "sign")):
            return 1001
        if h["accessKey"] != ACCESS_KEY:
            return 1005
        if h["sign"] != documented_sign(
            h["accessKey"], h["action"], h["bizType"], h["ts"], body, SECRET
        ):
            return 1003
        if not h["ts"].isdigit() or abs(int(h["ts"]) - time.time() * 1000) > 60_000:
            return 1004
        if h["bizType"] != "7" or h["action"] != "mt":
            return 1002
        try:
            data = json.loads(body)
        except ValueError:
            return 1002
        if not all(data.get(k) for k in ("appkey", "phone", "functionType", "messageData")):
            return 1001
        md = data["messageData"]
        if (
            data["appkey"] != APPKEY
            or data["functionType"] != "text"
            or not md.get("text")
            or md.get("rateType") not in ("Transactional", "Promotional", "Session")
        ):
            return 1002
        return 0

    def wsgi(self, environ, start_response):
        request = Request(environ)
        if self.delay:
            time.sleep(self.delay)
        if request.method != "POST" or request.path != "/api/viber/mt":
            return Response("not found", status=404)(environ, start_response)
        code = self.check(request)
        if code == 0 and self.next_codes:
            code = self.next_codes.pop(0)
        if code == 0:
            answer = {"code": 0, "message": "Success", "data": {"requestId": uuid.uuid4().hex}}
            self.sent.append(
                {**json.loads(request.get_data()), "requestId": answer["data"]["requestId"]}
            )
            if self.before_answer is not None:
                self.before_answer(answer["data"]["requestId"])
        else:
            answer = {"code": code, "message": f"error {code}"}
        self.calls.append(
            {"headers": dict(request.headers), "body": request.get_data(), "answer": answer}
        )
        return Response(json.dumps(answer), mimetype="application/json")(environ, start_response)

    def start(self):
        self.server.start()
        return self

    def stop(self):
        self.server.stop()


@pytest.fixture
def fake_nxcloud():
    fake = FakeNxcloud().start()
    yield fake
    fake.stop()


def nxcloud_config(fake: FakeNxcloud, **overrides) -> dict:
    return {
        "NXCLOUD_BASE_URL": fake.url,
        "NXCLOUD_ACCESS_KEY": ACCESS_KEY,
        "NXCLOUD_ACCESS_SECRET": SECRET,
        "NXCLOUD_APPKEY": APPKEY,
        "NXCLOUD_TIMEOUT": 2,
        **overrides,
    }
