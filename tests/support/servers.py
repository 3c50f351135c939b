"""Real servers for the tests: the app on a thread of this process (LiveServer), or the
production command run as a subprocess, for tests that need several workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from werkzeug.serving import make_server

from app.ingest.committer.supervisor import is_committer

from . import secrets_in_logs

ROOT = Path(__file__).resolve().parent.parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"


class LiveServer:
    """A real threaded HTTP server for any WSGI app, on a free port of 127.0.0.1."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll interval: shutdown() waits up to one interval.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def production_server(
    env: dict,
    log_path: Path,
    *,
    unset: tuple = (),
    seconds: float = 60,
    access_log: str = os.devnull,
) -> Iterator[str]:
    """`gunicorn -c gunicorn.conf.py 'app:create_app()'` on a free port with `env` added to the
    environment; yields its base URL once /healthz answers, and stops it afterwards."""
    with production_process(env, log_path, unset=unset, seconds=seconds, access_log=access_log) as (
        url,
        _proc,
    ):
        yield url


def _children(master: int) -> list[int]:
    """Every thread's children (the committer is started again from a thread of the master)."""
    pids = []
    for task in Path(f"/proc/{master}/task").glob("*"):
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers of a master process (its children but the ingest committer)."""
    return [pid for pid in _children(master) if not is_committer(pid)]


def committer_pid(master: int) -> int | None:
    """The ingest committer the master started (app/ingest/committer/), if it runs."""
    return next((pid for pid in _children(master) if is_committer(pid)), None)


@contextmanager
def production_process(
    env: dict,
    log_path: Path,
    *,
    unset: tuple = (),
    seconds: float = 60,
    access_log: str = os.devnull,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`production_server`, yielding the base URL and the master process."""
    port = free_port()
    # Each server spools into a folder of its own test (never into the repository's instance).
    full_env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "VIBERWATCH_SPOOL_FOLDER": str(Path(log_path).parent / "spool"),
        **env,
    }
    for name in unset:
        full_env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    # Every line it writes is looked at for the secrets it was given (tests/conftest.py).
    secrets_in_logs.add_secrets_of(env)
    secrets_in_logs.log_files.add(Path(log_path))
    if access_log == os.devnull:
        access_log = str(Path(log_path).with_suffix(".access.log"))
    secrets_in_logs.log_files.add(Path(access_log))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(GUNICORN),
                "-c",
                "gunicorn.conf.py",
                "--access-logfile",
                str(access_log),
                "app:create_app()",
            ],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + seconds
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:  # not listening yet, or still starting
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start: " + Path(log_path).read_text())
                time.sleep(0.2)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
