"""The NXCLOUD send client against a local fake of the send API, over real HTTP."""

import json
import socket
import time

import pytest

from app.core.status import describe_code
from app.sending import nxcloud
from support.fake_nxcloud import ACCESS_KEY, APPKEY, ERROR_CODES, SECRET, documented_sign


def settings_for(fake, **overrides):
    values = {
        "base_url": fake.url,
        "access_key": ACCESS_KEY,
        "access_secret": SECRET,
        "appkey": APPKEY,
        "timeout": 2.0,
        **overrides,
    }
    return nxcloud.Settings(**values)


def test_a_text_is_sent_signed_over_its_exact_bytes(fake_nxcloud):
    result = nxcloud.send_text(
        settings_for(fake_nxcloud), "79100000030", "Привет, <b>there</b> & 👋"
    )
    assert result.ok and result.error is None
    assert result.request_id == fake_nxcloud.sent[0]["requestId"] and len(result.request_id) == 32
    call = fake_nxcloud.calls[0]
    assert call["body"] == result.body
    assert json.loads(call["body"]) == {
        "appkey": APPKEY,
        "phone": "79100000030",
        "functionType": "text",
        "messageData": {"rateType": "Session", "text": "Привет, <b>there</b> & 👋"},
    }
    h = call["headers"]
    assert (h["Biztype"], h["Action"], h["Accesskey"]) == ("7", "mt", ACCESS_KEY)
    assert abs(int(h["Ts"]) - time.time() * 1000) < 60_000
    assert h["Sign"] == documented_sign(ACCESS_KEY, "mt", "7", h["Ts"], call["body"], SECRET)


def test_the_rate_type_is_configurable(fake_nxcloud):
    settings = nxcloud.Settings.from_config(
        {
            "NXCLOUD_BASE_URL": fake_nxcloud.url,
            "NXCLOUD_ACCESS_KEY": ACCESS_KEY,
            "NXCLOUD_ACCESS_SECRET": SECRET,
            "NXCLOUD_APPKEY": APPKEY,
            "NXCLOUD_RATE_TYPE": "Transactional",
        }
    )
    assert nxcloud.send_text(settings, "79100000030", "hi").ok
    assert json.loads(fake_nxcloud.calls[0]["body"])["messageData"]["rateType"] == "Transactional"


@pytest.mark.parametrize("code", ERROR_CODES)
def test_each_documented_error_comes_back_with_meaning_and_solution(fake_nxcloud, code):
    fake_nxcloud.next_codes.append(code)
    result = nxcloud.send_text(settings_for(fake_nxcloud), "79100000030", "hi")
    assert not result.ok and result.kind == "nxcloud" and result.code == code
    assert result.request_id is None
    expected = nxcloud.API_CODES.get(code) or describe_code(code)
    assert (result.reason, result.solution) == (expected.message, expected.solution)
    assert result.reason != "Unknown code" and result.solution
    assert result.error == f"{code} {result.reason}"


def test_the_send_api_codes_are_described_from_the_documentation():
    assert nxcloud.describe(-1).message == "Failure"
    assert nxcloud.describe(1001).message == "Missing parameters"
    assert nxcloud.describe(1003).message == "Invalid signature"
    assert "NXCLOUD_ACCESS_SECRET" in nxcloud.describe(1003).solution
    assert nxcloud.describe(1004).message == "Timestamp expired"
    assert nxcloud.describe(1102).message == "Insufficient balance"
    assert nxcloud.describe(12345).message == "Unknown code"


def test_a_wrong_secret_is_refused_as_an_invalid_signature(fake_nxcloud):
    result = nxcloud.send_text(
        settings_for(fake_nxcloud, access_secret="not-the-secret"), "79100000030", "hi"
    )
    assert (result.ok, result.code, result.reason) == (False, 1003, "Invalid signature")
    assert fake_nxcloud.sent == []


def test_a_stale_timestamp_is_refused(fake_nxcloud):
    stale = int(time.time() * 1000) - 120_000
    result = nxcloud.send_text(settings_for(fake_nxcloud), "79100000030", "hi", ts_ms=stale)
    assert (result.code, result.reason) == (1004, "Timestamp expired")


def test_a_timeout_is_reported_not_raised(fake_nxcloud):
    fake_nxcloud.delay = 1.5
    result = nxcloud.send_text(settings_for(fake_nxcloud, timeout=0.3), "79100000030", "hi")
    assert (result.ok, result.kind, result.code) == (False, "timeout", None)
    assert result.reason == "NXCLOUD did not answer within 0.3 s"
    assert "may or may not" in result.solution


def test_a_refused_connection_is_reported_not_raised():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = nxcloud.send_text(
        nxcloud.Settings(base_url=closed, access_key="k", access_secret="s", appkey="a", timeout=2),
        "79100000030",
        "hi",
    )
    assert (result.ok, result.kind) == (False, "network")
    assert result.reason.startswith(f"could not reach NXCLOUD at {closed}/api/viber/mt")
    assert "NXCLOUD_BASE_URL" in result.solution


def test_an_answer_that_is_not_nxcloud_json_is_reported(fake_nxcloud):
    result = nxcloud.send_text(
        settings_for(fake_nxcloud, base_url=fake_nxcloud.url + "/elsewhere"), "79100000030", "hi"
    )
    assert (result.ok, result.kind, result.reason) == (
        False,
        "answer",
        "unexpected answer from NXCLOUD: HTTP 404",
    )


def test_missing_settings_are_named_and_nothing_is_called(fake_nxcloud):
    result = nxcloud.send_text(
        nxcloud.Settings(base_url=fake_nxcloud.url, access_key="k"), "791", "hi"
    )
    assert (result.ok, result.kind) == (False, "config")
    assert result.reason == "not configured: NXCLOUD_ACCESS_SECRET, NXCLOUD_APPKEY"
    assert fake_nxcloud.calls == []
