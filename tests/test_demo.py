"""`make demo` as a new operator runs it: the real make target, server and simulator, stopped
with Ctrl-C. Its messages are sent through viberwatch's send proxy, so each is known with its
phone and text, some with a campaign tag."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support import interrupt

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


def two_free_ports() -> int:
    """A port whose successor is free too (the played send API listens there)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two free ports in a row")


@pytest.fixture
def demo_env(database_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIBERWATCH_")}
    env.update(DATABASE_URL=database_url, VIBERWATCH_SECRET_KEY="demo-test")
    viberwatch = str(VENV / "bin" / "viberwatch")
    # A user from an earlier run: the demo cannot print its password.
    for args in (
        ["db", "upgrade"],
        ["create-user", "operator", "--password", "an earlier password"],
    ):
        subprocess.run([viberwatch, *args], env=env, cwd=ROOT, check=True, capture_output=True)
    return env


def demo_messages(database_url, tmp_path) -> list[tuple]:
    """(requestId, phone, text, tags, receipts) of every message the demo's database holds."""
    from app import create_app
    from app.records.models import Message, db

    reader = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "SECRET_KEY": "demo-test",
            "SPOOL_FOLDER": str(tmp_path / "reader-spool"),
        }
    )
    with reader.app_context():
        try:
            m = Message
            return db.session.execute(
                db.select(m.request_id, m.phone, m.text, m.tags, m.receipts_count)
            ).all()
        finally:
            db.session.remove()
            db.engine.dispose()


def test_make_demo_keeps_the_terminal_for_the_simulator_and_says_where_everything_is(
    demo_env, database_url, tmp_path
):
    if shutil.which("make") is None:
        pytest.fail("make is needed: it is how the README starts the demo")
    port, log = two_free_ports(), tmp_path / "server.log"
    command = [
        "make",
        "--no-print-directory",
        "-o",
        f"{VENV}/.installed",
        "demo",
        f"VENV={VENV}",
        "HOST=127.0.0.1",
        f"PORT={port}",
        "DEMO_RATE=5",
        "DEMO_DURATION=20",
        f"DEMO_LOG={log}",
    ]
    # A session of its own: Ctrl-C in a terminal reaches make, the server and the simulator.
    proc = interrupt.popen(
        command,
        cwd=ROOT,
        env=demo_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and len(re.findall(r"endpoint=dr", log.read_text())) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(10)
    terminal = "".join(lines)
    # How to sign in when the password cannot be shown.
    assert "Users exist (operator)" in terminal and "viberwatch set-password operator" in terminal
    # The send API on PORT+1, said before the simulator starts, and where the server logs.
    assert f"played at http://127.0.0.1:{port + 1}" in terminal
    assert f"server log:   {log}" in terminal
    assert f"playing NXCLOUD's send API at http://127.0.0.1:{port + 1}/api/viber/mt" in terminal
    # The server's lines are in its log, none in the terminal; the simulator's summary is.
    server_lines = re.compile(r'"(GET|POST) /|viberwatch\.webhooks')
    assert server_lines.search(log.read_text())
    assert not [line for line in lines if server_lines.search(line)], terminal
    assert re.search(r"sent \d+ of \d+ requests in \d+\.\d s", terminal), terminal
    # Every message went through the send proxy: none was refused, each is known with its
    # phone and text (registered by the proxy), and its receipts met that registration.
    proxy = f"sending each message through viberwatch's send proxy at http://127.0.0.1:{port}"
    assert proxy in terminal and "sent through the send proxy: " in terminal, terminal
    assert "refused 0, network errors 0" in terminal, terminal
    from app.simulate.script import CAMPAIGNS

    messages = demo_messages(database_url, tmp_path)
    assert messages and all(phone and text for _, phone, text, _, _ in messages), messages
    assert sum(receipts for *_, receipts in messages) >= 3
    tags = {tag for *_, tagged, _ in messages if tagged for tag in tagged.split(",")}
    assert tags and tags <= set(CAMPAIGNS), tags
    # The log shows the registrations came from the proxy, none from POST /api/messages.
    server_log = log.read_text()
    assert "POST /nxcloud/api/viber/mt" in server_log and "POST /api/messages" not in server_log
