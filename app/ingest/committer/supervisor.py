"""The gunicorn master's side of the committer (gunicorn.conf.py): start it before the
workers, start it again if it ends, stop it after the workers have stopped."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .client import SOCKET_ENV

log = logging.getLogger(__name__)

# What the master runs: the viberwatch command's committer (app/ingest/__init__.py).
COMMAND = "ingest-committer"


def is_committer(pid: int) -> bool:
    """Whether a process is a committer started by `Supervisor`."""
    try:
        return COMMAND.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


class Supervisor:
    """Starts the committer before the workers, starts it again if it ends, stops it after
    the workers have stopped."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="viberwatch-ingest-")
        self.path = os.path.join(self.folder, "committer.sock")
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, seconds: float = 60.0) -> None:
        """Start the committer and wait (up to `seconds`) until it listens; the workers it
        serves are told its address through the environment they inherit."""
        os.environ[SOCKET_ENV] = self.path
        self._spawn(seconds)
        self._watcher = threading.Thread(target=self._watch, name="committer-watch", daemon=True)
        self._watcher.start()

    def _spawn(self, seconds: float) -> None:
        # The committer applies, it does not hand over: its environment has no socket.
        env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", COMMAND, self.path], env=env)
        deadline = time.monotonic() + seconds
        while not os.path.exists(self.path) and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return
            time.sleep(0.05)

    def _watch(self) -> None:
        while not self.stopping.is_set():
            code = self.proc.wait()
            if self.stopping.is_set():
                return
            log.error("the ingest committer ended (exit status %s); starting it again", code)
            # Meanwhile the workers apply the bodies themselves.
            if self.stopping.wait(1.0):
                return
            self._spawn(60.0)

    def stop(self, seconds: float) -> int | None:
        """Stop the committer (it answers the bodies it has read first); its pid."""
        self.stopping.set()
        proc = self.proc
        if proc is None:
            return None
        proc.terminate()
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        return proc.pid
