"""A client for NXCLOUD's Viber send API (`POST <base>/api/viber/mt`); no Flask, no database.

Every way a send can go wrong comes back as a `SendResult` with a reason an operator can
act on; nothing here raises for a failed send.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from .. import config
from ..core import signing
from ..core.status import Code, describe_code

SEND_PATH = "/api/viber/mt"
BIZ_TYPE = signing.VIBER_BIZ_TYPE
ACTION = "mt"
DEFAULT_BASE_URL = config.default("NXCLOUD_BASE_URL")

# The send API's own codes; the webhook page's table (app/core/status.py) covers the rest.
API_CODES: dict[int, Code] = {
    c.code: c
    for c in (
        Code(
            -1,
            "Failure",
            "NXCLOUD reported a failure without detail; try again, and contact "
            "NXCLOUD support if it persists",
        ),
        Code(
            1001,
            "Missing parameters",
            "A required parameter is missing; check NXCLOUD_APPKEY, the phone number and the text",
        ),
        Code(
            1002,
            "Bad parameters",
            "A parameter has a wrong value; check the phone number "
            "(with its country code) and the text",
        ),
        Code(
            1003,
            "Invalid signature",
            "NXCLOUD could not verify the signature; check "
            "NXCLOUD_ACCESS_KEY and NXCLOUD_ACCESS_SECRET",
        ),
        Code(
            1004,
            "Timestamp expired",
            "The request's time is more than 60 s from NXCLOUD's "
            "clock; synchronise this server's clock (NTP)",
        ),
        Code(
            1005,
            "Insufficient permissions",
            "This access key may not use the Viber send API; check its permissions with NXCLOUD",
        ),
    )
}


def describe(code: int) -> Code:
    """Meaning and solution of a code the send API answered with."""
    return API_CODES.get(code) or describe_code(code)


@dataclass(frozen=True)
class Settings:
    base_url: str = DEFAULT_BASE_URL
    access_key: str | None = None
    access_secret: str | None = None
    appkey: str | None = None
    timeout: float = 10.0
    rate_type: str = "Session"

    @classmethod
    def from_config(cls, config: Mapping) -> Settings:
        def text(name: str) -> str | None:
            value = config.get(name)
            return None if value in (None, "") else str(value)

        return cls(
            base_url=text("NXCLOUD_BASE_URL") or DEFAULT_BASE_URL,
            access_key=text("NXCLOUD_ACCESS_KEY"),
            access_secret=text("NXCLOUD_ACCESS_SECRET"),
            appkey=text("NXCLOUD_APPKEY"),
            timeout=config.get("NXCLOUD_TIMEOUT") or 10,
            rate_type=text("NXCLOUD_RATE_TYPE") or "Session",
        )

    def missing(self) -> list[str]:
        return [
            name
            for name, value in (
                ("NXCLOUD_ACCESS_KEY", self.access_key),
                ("NXCLOUD_ACCESS_SECRET", self.access_secret),
                ("NXCLOUD_APPKEY", self.appkey),
            )
            if not value
        ]

    @property
    def send_url(self) -> str:
        return self.base_url.rstrip("/") + SEND_PATH


@dataclass(frozen=True)
class SendResult:
    ok: bool
    request_id: str | None = None
    code: int | None = None  # NXCLOUD's answer code; None when it gave none
    kind: str | None = None  # on failure: nxcloud | timeout | network | answer | config
    reason: str | None = None
    solution: str | None = None
    body: bytes = b""  # the exact JSON sent

    @property
    def error(self) -> str | None:
        if self.ok:
            return None
        return f"{self.code} {self.reason}" if self.code is not None else self.reason


def text_body(settings: Settings, phone: str, text: str) -> bytes:
    """The exact bytes of a text message send; the signature is computed over them."""
    data = {
        "appkey": settings.appkey,
        "phone": phone,
        "functionType": "text",
        "messageData": {"rateType": settings.rate_type, "text": text},
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signed_headers(settings: Settings, body: bytes, ts_ms: int) -> dict:
    ts = str(ts_ms)
    return {
        "Content-Type": "application/json",
        "accessKey": settings.access_key,
        "ts": ts,
        "bizType": BIZ_TYPE,
        "action": ACTION,
        "sign": signing.sign(
            settings.access_key, ACTION, BIZ_TYPE, ts, body, settings.access_secret
        ),
    }


def _failure(
    kind: str, reason: str, solution: str, body: bytes, code: int | None = None
) -> SendResult:
    return SendResult(ok=False, code=code, kind=kind, reason=reason, solution=solution, body=body)


def send_text(
    settings: Settings,
    phone: str,
    text: str,
    *,
    ts_ms: int | None = None,
    client: httpx.Client | None = None,
) -> SendResult:
    """Send one text message; the answer's requestId identifies it in every receipt."""
    missing = settings.missing()
    if missing:
        return _failure(
            "config",
            f"not configured: {', '.join(missing)}",
            "Set them in instance/config.py or as VIBERWATCH_<NAME> in the environment",
            b"",
        )
    body = text_body(settings, phone, text)
    headers = signed_headers(
        settings, body, ts_ms if ts_ms is not None else int(time.time() * 1000)
    )
    url = settings.send_url
    try:
        if client is None:
            with httpx.Client(timeout=settings.timeout) as own:
                response = own.post(url, content=body, headers=headers)
        else:
            response = client.post(url, content=body, headers=headers, timeout=settings.timeout)
    except httpx.TimeoutException:
        return _failure(
            "timeout",
            f"NXCLOUD did not answer within {settings.timeout:g} s",
            "The message may or may not have been sent; check before sending it again",
            body,
        )
    except httpx.HTTPError as exc:
        return _failure(
            "network",
            f"could not reach NXCLOUD at {url}: {_first_line(exc)}",
            "Check NXCLOUD_BASE_URL and this server's network connection",
            body,
        )
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if (
        not isinstance(answer, dict)
        or not isinstance(answer.get("code"), int)
        or isinstance(answer.get("code"), bool)
    ):
        return _failure(
            "answer",
            f"unexpected answer from NXCLOUD: HTTP {response.status_code}",
            "Check NXCLOUD_BASE_URL; if it is right, NXCLOUD may be having trouble",
            body,
        )
    code = answer["code"]
    if code != 0:
        described = describe(code)
        reason = described.message
        if described.message == "Unknown code" and isinstance(answer.get("message"), str):
            reason = f"{answer['message'][:200]} (unknown code)"
        return _failure("nxcloud", reason, described.solution, body, code=code)
    data = answer.get("data")
    request_id = data.get("requestId") if isinstance(data, dict) else None
    if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > 128:
        return _failure(
            "answer",
            "NXCLOUD answered success without a usable requestId",
            "The message may have been sent; ask NXCLOUD support with the time of the send",
            body,
            code=0,
        )
    return SendResult(ok=True, request_id=request_id, code=0, body=body)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
