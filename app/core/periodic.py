"""A background thread that does one thing every so often, once per process."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .services import services


class Periodic:
    """Calls `tick` every `interval` seconds on a daemon thread, from the first
    `ensure_started` (a request hook: the thread starts in the process that serves) until
    `stop`."""

    def __init__(self, name: str, interval: Callable[[], float], tick: Callable[[], None]):
        self.name = name
        self.interval = interval
        self.tick = tick
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def ensure_started(self) -> None:
        if self.thread is not None:
            return
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()

    def _run(self) -> None:
        interval = self.interval()
        while not self.stopped.wait(interval):
            self.tick()

    def stop(self) -> None:
        self.stopped.set()


def start_with_requests(app, periodic: Periodic) -> None:
    """Start `periodic` in each process with its first request: a request to the app, or a
    webhook a worker's event loop answers (app/server/loop.py calls `start_all`)."""
    services(app).started_by_requests.append(periodic)
    app.before_request(periodic.ensure_started)


def start_all(app) -> None:
    for periodic in services(app).started_by_requests:
        periodic.ensure_started()
