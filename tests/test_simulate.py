"""The simulator: a reproducible script, played over real HTTP against a live viberwatch."""

import hashlib
import json
import socket
from collections import Counter

import pytest
from sqlalchemy import func

from app.records.models import Message, RawBody, Receipt, Reply, db
from app.simulate.run import Target, build_request, run
from app.simulate.script import ScriptedMessage, build_script
from support import interrupt


def fast_script(seed, messages, **kwargs):
    return build_script(seed, messages, rate=200.0, speed=200.0, **kwargs)


def test_same_seed_gives_the_same_bodies_in_the_same_order():
    a = build_script(7, 50)
    b = build_script(7, 50)
    c = build_script(8, 50)
    assert [(e.at, e.kind, e.body) for e in a.events] == [(e.at, e.kind, e.body) for e in b.events]
    assert [e.body for e in a.events] != [e.body for e in c.events]
    # Speed changes when events happen, never what they say.
    fast = build_script(7, 50, speed=10)
    assert sorted(e.body for e in fast.events) == sorted(e.body for e in a.events)


def test_script_plays_the_real_platform_irregularities():
    script = build_script(11, 400)
    notes = Counter(e.note for e in script.events)
    assert notes["duplicate"] and notes["early-seen"] and notes["retry"] and notes["late-register"]
    assert set(script.outcomes()) == {"seen", "delivered", "failed", "expired", "success"}
    assert script.outcomes()["seen"] > script.outcomes()["expired"]
    failed_codes = {
        d["code"] for m in script.messages for d in m.receipt_bodies if d["status"] == "failed"
    }
    assert {1102, 11000} <= failed_codes
    for m in script.messages:
        kinds = [e.kind for e in m.events]
        assert kinds.count("register") == 1
        for d in m.receipt_bodies:
            assert ("cost" in d) == (d["status"] in ("success", "delivered"))
        statuses = [d["status"] for d in m.receipt_bodies]
        if any(e.note == "early-seen" for e in m.events):
            assert statuses.index("seen") < statuses.index("delivered")
    replies = [e.data["message"] for e in script.events if e.kind == "message"]
    assert any("text" in r for r in replies) and any("media" in r for r in replies)
    assert build_script(11, 5, register=False).count("register") == 0


def test_intended_columns_follow_the_fold():
    script = build_script(3, 200)
    for m in script.messages:
        columns = m.intended_columns()
        assert columns["status"] == m.outcome
        assert columns["anomalies"] is None
        assert columns["phone"] == m.phone and columns["text"] == m.text


def test_signed_request_carries_the_documented_signature():
    event = build_script(1, 1).messages[0].events[-1]
    target = Target("http://example.test/", token="t0k", access_key="ak", secret="s3")
    url, params, headers = build_request(event, target, 1700000000000)
    if event.kind == "register":
        assert "sign" not in headers and params == {}
        return
    assert url == "http://example.test" + (
        "/webhooks/viber/dr" if event.kind == "dr" else "/webhooks/viber/message"
    )
    assert params == {"token": "t0k"}
    plain = (
        f"accessKey=ak&action={headers['action']}&bizType=7&ts=1700000000000&body=".encode()
        + event.body
        + b"&accessSecret=s3"
    )
    assert headers["sign"] == hashlib.md5(plain).hexdigest()
    assert headers["accessKey"] == "ak" and headers["ts"] == "1700000000000"


def test_every_message_ends_in_the_state_its_script_intended(app, live_server, api_token):
    script = fast_script(21, 60)
    summary = run(script, Target(live_server.url, api_token=api_token), concurrency=8)
    assert summary.errors == 0 and summary.refused == 0
    assert summary.sent == summary.answered_2xx == len(script.events)
    with app.app_context():
        # Every column that does not depend on when a body arrived is as the script intends.
        timeless = (
            "phone",
            "text",
            "appkey",
            "function_type",
            "status",
            "code",
            "code_message",
            "send_time_raw",
            "send_time",
            "cost_currency",
            "cost_local_price",
            "cost_original_price",
            "cost_rate_type",
            "anomalies",
            "anomaly",
            "receipts_count",
            "replies_count",
            "last_reply_text",
        )
        for m in script.messages:
            intended = m.intended_columns()
            row = db.session.get(Message, m.request_id)
            assert row is not None, m.request_id
            assert {c: getattr(row, c) for c in timeless} == {c: intended[c] for c in timeless}
            assert (row.phone, row.text, row.anomaly) == (m.phone, m.text, False)
            assert row.replies_count == sum(1 for e in m.events if e.kind == "message")
        # The summary's counts are the database's counts.
        kept = dict(
            db.session.execute(
                db.select(RawBody.endpoint, func.count()).group_by(RawBody.endpoint)
            ).all()
        )
        assert kept == {
            k: n
            for k, n in (
                ("dr", script.count("dr")),
                ("message", script.count("message")),
                ("register", script.count("register")),
            )
            if n
        }
        answered = db.session.execute(
            db.select(func.count()).where(RawBody.http_status < 300)
        ).scalar()
        assert answered == summary.answered_2xx
        assert dict(summary.answered_by_kind) == {k: n for k, n in kept.items()}
        distinct_dr = {e.body for e in script.events if e.kind == "dr"}
        assert db.session.execute(db.select(func.count(Receipt.id))).scalar() == len(distinct_dr)
        assert db.session.execute(
            db.select(func.sum(Receipt.times_received))
        ).scalar() == script.count("dr")
        assert db.session.execute(db.select(func.count(Reply.id))).scalar() == script.count(
            "message"
        )
        assert db.session.execute(db.select(func.count()).select_from(Message)).scalar() == 60


def test_replaying_a_seed_repeats_the_same_bodies_and_changes_no_state(app, live_server, api_token):
    script = fast_script(5, 25)
    target = Target(live_server.url, api_token=api_token)
    run(script, target, concurrency=4)
    with app.app_context():
        before = {
            m.request_id: (m.status, m.code, m.phone)
            for m in db.session.execute(db.select(Message)).scalars()
        }
        raw_before = [
            json.loads(b)
            for b in db.session.execute(db.select(RawBody.body).order_by(RawBody.id)).scalars()
        ]
    again = run(fast_script(5, 25), target, concurrency=4)
    assert again.answered_2xx == len(script.events)
    with app.app_context():
        after = {
            m.request_id: (m.status, m.code, m.phone)
            for m in db.session.execute(db.select(Message)).scalars()
        }
        raw_after = [
            json.loads(b)
            for b in db.session.execute(db.select(RawBody.body).order_by(RawBody.id)).scalars()
        ]
        outcomes = Counter(
            db.session.execute(
                db.select(RawBody.outcome).where(RawBody.id > len(raw_before))
            ).scalars()
        )
    assert after == before and len(after) == 25
    # The second run pushed the very same bodies; every one was a repeat.
    assert sorted(map(json.dumps, raw_after[len(raw_before) :])) == sorted(
        map(json.dumps, raw_before)
    )
    assert outcomes == Counter({"duplicate": len(script.events)})


def test_refused_and_unreachable_requests_are_counted(app, live_server):
    script = fast_script(9, 5)
    wrong = run(script, Target(live_server.url + "/nowhere"), concurrency=4)
    assert wrong.refused == wrong.sent == len(script.events) and wrong.answered_2xx == 0
    # Unknown paths: 404, or 401 where the login requirement answers first.
    assert sum(n for status, n in wrong.statuses.items() if status in (401, 404)) == len(
        script.events
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = run(script, Target(closed), concurrency=4, timeout=2)
    assert down.errors == len(script.events) and down.answered_2xx == 0
    assert any("ConnectError" in p for p in down.problems)


def test_simulate_command_prints_a_summary(app, live_server, api_token):
    result = app.test_cli_runner().invoke(
        args=[
            "simulate",
            "--url",
            live_server.url,
            "--messages",
            "12",
            "--rate",
            "100",
            "--speed",
            "100",
            "--seed",
            "4",
            "--quiet",
            "--api-token",
            api_token,
        ]
    )
    assert result.exit_code == 0, result.output
    planned = len(build_script(4, 12).events)
    assert "seed 4: 12 messages" in result.output
    assert f"answered 2xx {planned}, refused 0, network errors 0" in result.output
    assert "latency ms: p50" in result.output
    with app.app_context():
        assert db.session.execute(db.select(func.count()).select_from(Message)).scalar() == 12
    bad = app.test_cli_runner().invoke(args=["simulate", "--messages", "3", "--duration", "4"])
    assert bad.exit_code == 2 and "not both" in bad.output


@pytest.fixture
def authenticated_webhooks(app_config):
    app_config.update(
        WEBHOOK_TOKEN="url-secret", WEBHOOK_SIGN_ACCESS_KEY="ak1", WEBHOOK_SIGN_SECRET="sk1"
    )


def test_signed_webhooks_with_a_url_token_are_accepted(
    authenticated_webhooks, app, live_server, api_token
):
    script = fast_script(13, 10)
    good = run(
        script,
        Target(
            live_server.url, token="url-secret", access_key="ak1", secret="sk1", api_token=api_token
        ),
        concurrency=4,
    )
    assert good.answered_2xx == len(script.events) and good.refused == 0
    # Without the credentials every webhook call is refused, and counted as such.
    bare = run(fast_script(14, 10), Target(live_server.url, api_token=api_token), concurrency=4)
    webhook_calls = sum(1 for e in fast_script(14, 10).events if e.kind != "register")
    assert bare.refused == webhook_calls and bare.statuses[401] == webhook_calls
    with app.app_context():
        refused = db.session.execute(
            db.select(func.count()).where(RawBody.outcome == "refused")
        ).scalar()
    assert refused == webhook_calls


def test_registration_without_an_api_token_is_refused(app, live_server):
    script = fast_script(15, 6)
    summary = run(script, Target(live_server.url), concurrency=4)
    assert summary.refused == script.count("register") == 6
    assert summary.answered_2xx == len(script.events) - 6


def test_the_played_send_api_answers_sends_and_pushes_their_receipts(app, live_server, client):
    """What `make demo` relies on: a send from a thread gets a requestId and then receipts."""
    import asyncio
    import threading
    import time

    from app.sending import nxcloud
    from app.simulate.run import play
    from app.simulate.send_api import PlayedSendApi

    state, ready = {}, threading.Event()

    async def main():
        stop = asyncio.Event()
        state["stop"], state["loop"] = stop, asyncio.get_running_loop()

        def on_start(player):
            api = PlayedSendApi(
                "127.0.0.1",
                0,
                lambda events: player.loop.call_soon_threadsafe(player.play_later, events),
                access_key="ak",
                secret="sk",
                seed=3,
                speed=50,
            )
            state["api"] = api.start()
            ready.set()

        async def then(player):
            await stop.wait()

        state["summary"] = await play(
            build_script(0, 0), Target(live_server.url), on_start=on_start, then=then
        )

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    api = state["api"]
    try:
        app.config.update(
            NXCLOUD_BASE_URL=api.url,
            NXCLOUD_ACCESS_KEY="ak",
            NXCLOUD_ACCESS_SECRET="sk",
            NXCLOUD_APPKEY="DemoApp",
        )
        wrong = nxcloud.send_text(
            nxcloud.Settings(
                base_url=api.url, access_key="ak", access_secret="nope", appkey="DemoApp"
            ),
            "79100000001",
            "hi",
        )
        assert (wrong.code, wrong.reason) == (1003, "Invalid signature")
        for n in range(3):
            assert "Sent · requestId" in client.post(
                "/conversations/79100000001/send",
                data={"text": f"hello {n}", "confirm": "1"},
                headers={"HX-Request": "true"},
            ).get_data(as_text=True)
        assert len(api.played) == 3
        deadline = time.monotonic() + 30
        with app.app_context():
            for events in api.played:
                request_id = events[0].request_id
                intended = ScriptedMessage(
                    request_id, "79100000001", "", "", True, events
                ).intended_columns()
                while True:
                    db.session.expire_all()
                    row = db.session.get(Message, request_id)
                    if (row.receipts_count, row.status) == (
                        sum(e.kind == "dr" for e in events),
                        intended["status"],
                    ) or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert (row.phone, row.status, row.code) == (
                    "79100000001",
                    intended["status"],
                    intended["code"],
                )
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        api.stop()
    assert state["summary"].answered_2xx == sum(len(events) for events in api.played)


def test_an_interrupted_run_reports_its_real_duration_and_rate(
    app, live_server, api_token, tmp_path
):
    """Ctrl-C ends the run early; the summary still says how long it ran and at what rate."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
        "VIBERWATCH_SECRET_KEY": "cli",
    }
    proc = interrupt.popen(
        [
            str(Path(sys.executable).parent / "viberwatch"),
            "simulate",
            "--url",
            live_server.url,
            "--messages",
            "400",
            "--rate",
            "4",
            "--seed",
            "5",
            "--quiet",
            "--api-token",
            api_token,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        with app.app_context():
            while db.session.execute(db.select(func.count()).select_from(RawBody)).scalar() < 5:
                assert time.monotonic() < deadline and proc.poll() is None, (
                    "the simulator sends nothing"
                )
                db.session.remove()
                time.sleep(0.1)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
    found = re.search(r"sent (\d+) of \d+ requests in ([\d.]+) s \(([\d.]+)/s\)", output)
    assert found, output
    sent, elapsed, rate = int(found.group(1)), float(found.group(2)), float(found.group(3))
    assert "interrupted" in output and sent >= 5
    assert elapsed >= 1.5 and abs(rate - sent / elapsed) <= 0.1 + rate * 0.05, output


@pytest.fixture
def played_send_api(app):
    """The simulator's played send API, with viberwatch's send proxy forwarding to it."""
    from app.simulate.send_api import PlayedSendApi

    own = []  # receipts it would play of its own: none for the script's sends
    api = PlayedSendApi("127.0.0.1", 0, own.append, access_key="ak", secret="sk", seed=2)
    api.own = own
    app.config.update(
        NXCLOUD_BASE_URL=api.url,
        NXCLOUD_ACCESS_KEY="ak",
        NXCLOUD_ACCESS_SECRET="sk",
        NXCLOUD_APPKEY="SIMAPP01",
    )
    yield api.start()
    api.stop()


def test_a_script_sent_through_the_send_proxy_registers_phone_text_and_tags(
    app, live_server, api_token, played_send_api
):
    from app.records.models import MessageTag
    from app.simulate.script import CAMPAIGNS
    from support.wait import until

    script = fast_script(31, 40, send=True)
    assert script.count("send") == 40 and script.count("register") == 0
    assert {m.tags for m in script.messages} == {(), *((c,) for c in CAMPAIGNS)}
    target = Target(live_server.url, api_token=api_token, send_access_key="ak", send_secret="sk")
    summary = run(script, target, concurrency=8, send_api=played_send_api)
    assert summary.errors == summary.refused == summary.skipped == 0, summary.lines()
    assert summary.sent == summary.answered_2xx == len(script.events)
    answered = summary.answered
    assert sorted(answered) == sorted(m.request_id for m in script.messages)
    assert sorted(answered.values()) == sorted(played_send_api.scripted)
    assert played_send_api.own == []  # the script's receipts, not the send API's own

    def registered(rid):
        db.session.remove()
        m = db.session.get(Message, rid)
        return m is not None and m.registered_at is not None

    with app.app_context():
        for m in script.messages:
            rid = answered[m.request_id]
            until(lambda rid=rid: registered(rid), 10, f"the registration of {rid}")
            row = db.session.get(Message, rid)
            intended = m.intended_columns()
            # Registered by the proxy from the send; the receipts and replies met it there.
            assert (row.phone, row.text, row.appkey, row.rate_type) == (
                m.phone,
                m.text,
                "SIMAPP01",
                "Transactional",
            )
            assert row.tags == (",".join(m.tags) or None)
            assert (row.status, row.code, row.receipts_count, row.replies_count) == (
                intended["status"],
                intended["code"],
                intended["receipts_count"],
                intended["replies_count"],
            )
        # Nothing under the script's own ids, every message known with its phone and text.
        assert (
            db.session.execute(
                db.select(func.count()).where(Message.request_id.in_(list(answered)))
            ).scalar()
            == 0
        )
        assert db.session.execute(db.select(func.count()).select_from(Message)).scalar() == 40
        assert (
            db.session.execute(
                db.select(func.count()).where(Message.phone.is_(None) | Message.text.is_(None))
            ).scalar()
            == 0
        )
        assert set(db.session.execute(db.select(MessageTag.tag)).scalars()) == set(CAMPAIGNS)
        # The probe registered nothing and was kept nowhere.
        assert (
            db.session.execute(
                db.select(func.count()).where(RawBody.body.contains(b"probe"))
            ).scalar()
            == 0
        )


def test_sends_through_a_proxy_that_forwards_elsewhere_stop_before_any_message(
    app, live_server, api_token, played_send_api, fake_nxcloud
):
    from app.simulate.run import SendPathError

    script = fast_script(32, 5, send=True)
    target = Target(live_server.url, api_token=api_token, send_access_key="ak", send_secret="sk")
    # The server's NXCLOUD is another one: the probe finds out, nothing is sent.
    app.config["NXCLOUD_BASE_URL"] = fake_nxcloud.url
    with pytest.raises(
        SendPathError, match=f"set the server's NXCLOUD_BASE_URL to {played_send_api.url}"
    ):
        run(script, target, send_api=played_send_api)
    assert [json.loads(c["body"])["phone"] for c in fake_nxcloud.calls] == [""]
    # Without the API token the proxy refuses, and the simulator says so.
    app.config["NXCLOUD_BASE_URL"] = played_send_api.url
    with pytest.raises(SendPathError, match="HTTP 401.*--api-token"):
        run(
            script,
            Target(live_server.url, send_access_key="ak", send_secret="sk"),
            send_api=played_send_api,
        )
    with app.app_context():
        assert db.session.execute(db.select(func.count()).select_from(Message)).scalar() == 0
    result = app.test_cli_runner().invoke(args=["simulate", "--messages", "2", "--through-proxy"])
    assert result.exit_code == 2 and "--through-proxy needs --send-api" in result.output


def test_a_send_the_send_api_refuses_is_counted_and_ends_its_message(
    app, live_server, api_token, played_send_api
):
    script = fast_script(33, 4, send=True)
    # Signed with the wrong secret: the played send API answers 1003, as NXCLOUD would.
    target = Target(live_server.url, api_token=api_token, send_access_key="ak", send_secret="no")
    summary = run(script, target, send_api=played_send_api)
    assert summary.refused == summary.sent == 4 and summary.answered == {}
    assert summary.skipped == len(script.events) - 4
    assert list(summary.problems) == ["send: NXCLOUD code 1003 Invalid signature"]
    assert f"not made: {summary.skipped} receipts and replies" in "\n".join(summary.lines())
    with app.app_context():
        assert db.session.execute(db.select(func.count()).select_from(Message)).scalar() == 0
