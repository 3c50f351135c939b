"""The Makefile's servers, run for real on a fresh database: `make serve` (the production
command) creates the first user and prints its password once, as `make run` does, and a
second start neither makes another nor prints a password; `make run`'s banner gives the
webhook URLs under PUBLIC_URL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from support.servers import ROOT, free_port

VENV = Path(sys.prefix)
PASSWORD_RE = re.compile(r"^  password: (\S+)$", re.M)
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')

pytestmark = pytest.mark.skipif(
    not (VENV / ".installed").exists(), reason="make needs the venv it installed (.installed)"
)


@contextmanager
def make(target: str, env: dict, out: Path, seconds: float = 90):
    """`make TARGET` on a free port, its output in `out`; yields the base URL once /healthz
    answers, then stops the whole process group it started."""
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VIBERWATCH_")},
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "8",
        **env,
    }
    full_env.pop("REDIS_URL", None)
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # -o: the venv counts as installed (no pip run when pyproject.toml is newer).
    args = ["make", "-s", "-o", f"{VENV}/.installed", target, f"VENV={VENV}"]
    args += ["HOST=127.0.0.1", f"PORT={port}"]
    url = f"http://127.0.0.1:{port}"
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + seconds
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"make {target} did not serve: " + out.read_text())
                time.sleep(0.2)
            yield url
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to make and everything it started (gunicorn, its workers and committer), then
    wait until all have exited; SIGKILL what is left after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.fixture
def env(database_url, tmp_path):
    instance = tmp_path / "instance"
    return {
        "DATABASE_URL": database_url,
        "VIBERWATCH_INSTANCE_PATH": str(instance),
        "VIBERWATCH_SPOOL_FOLDER": str(instance / "spool"),
    }


def usernames(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT username FROM app_user ORDER BY id")).scalars())
    finally:
        engine.dispose()


def signs_in(url: str, username: str, password: str) -> bool:
    with httpx.Client(base_url=url) as http:
        form = http.get("/login")
        token = CSRF_RE.search(form.text).group(1)
        answer = http.post(
            "/login", data={"username": username, "password": password, "csrf_token": token}
        )
        return answer.status_code == 302 and http.get("/").status_code == 200


def test_make_serve_creates_the_first_user_once_and_prints_its_password_once(
    env, database_url, tmp_path
):
    first = tmp_path / "first.out"
    with make("serve", env, first) as url:
        output = first.read_text()
        assert "No user existed, so one was created" in output
        assert "  username: admin" in output
        [password] = PASSWORD_RE.findall(output)
        assert usernames(database_url) == ["admin"]
        assert signs_in(url, "admin", password)
    second = tmp_path / "second.out"
    with make("serve", env, second) as url:
        output = second.read_text()
        assert "Users exist (admin)" in output and "viberwatch set-password admin" in output
        assert "password:" not in output and password not in output
        assert usernames(database_url) == ["admin"]
        assert signs_in(url, "admin", password)


def test_make_serve_leaves_existing_users_alone(env, database_url, tmp_path):
    """A database whose users were made beforehand (`viberwatch create-user`) gets none."""
    cli_env = {**os.environ, **env}
    for args in (["db", "upgrade"], ["create-user", "ops", "--password", "a long password"]):
        done = subprocess.run(
            [str(VENV / "bin" / "viberwatch"), *args],
            cwd=ROOT,
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "serve.out"
    with make("serve", env, out):
        output = out.read_text()
    assert "Users exist (ops)" in output and "password:" not in output
    assert usernames(database_url) == ["ops"]


def test_servers_starting_at_once_make_one_user(env, database_url):
    """Several hosts started together on one database: one user, one password printed."""
    cli = [str(VENV / "bin" / "viberwatch")]
    cli_env = {**os.environ, **env}
    subprocess.run([*cli, "db", "upgrade"], cwd=ROOT, env=cli_env, check=True, timeout=120)
    starts = [
        subprocess.Popen(
            [*cli, "ensure-admin"], cwd=ROOT, env=cli_env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in starts]
    assert [p.returncode for p in starts] == [0, 0, 0], outputs
    assert sum(len(PASSWORD_RE.findall(o)) for o in outputs) == 1, outputs
    assert usernames(database_url) == ["admin"]


def test_make_run_banner_gives_the_urls_under_public_url(env, database_url, tmp_path):
    out = tmp_path / "run.out"
    public = {**env, "VIBERWATCH_PUBLIC_URL": "https://watch.example.com/vw/"}
    with make("run", public, out) as url:
        output = out.read_text()
    assert "https://watch.example.com/vw/webhooks/viber/dr" in output
    assert "https://watch.example.com/vw/webhooks/viber/message" in output
    assert re.search(r"^dashboard +https://watch\.example\.com/vw/$", output, re.M)
    assert re.search(rf"^listening +{re.escape(url)}/$", output, re.M)
    assert "No user existed, so one was created" in output
