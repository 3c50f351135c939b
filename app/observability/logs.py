"""One structured log line per webhook request: endpoint, requestId, outcome, status, duration.

Plain `key=value` text by default; JSON lines (python-json-logger) when LOG_JSON is set.
The same measurement feeds the webhook latency histogram of /metrics.
"""

from __future__ import annotations

import logging
import re
import sys
import time

from flask import Flask, g, request
from pythonjsonlogger.json import JsonFormatter

from . import metrics
from .redaction import redact_logger

log = logging.getLogger("viberwatch.webhooks")
# A value with a space, a quote or an equals sign is written quoted.
_QUOTED = re.compile(r'[\s"=]')


FIELDS = ("endpoint", "requestId", "outcome", "status", "durationMs", "remoteAddr")
# The spool's lines (app/records/ingest.py): when spooling starts, fails, and when a spool is drained.
SPOOL_FIELDS = ("event", "spool", "bodies")
WEBHOOK_ENDPOINTS = {"webhooks.delivery_receipt": "dr", "webhooks.user_reply": "message"}
# Answers given before a body is validated: authentication, source address, size.
REFUSED_STATUSES = (401, 403, 413)


class KeyValueFormatter(logging.Formatter):
    """`time level logger message key=value ...`, values quoted when they hold spaces."""

    def __init__(self, fmt: str, fields: tuple = FIELDS):
        super().__init__(fmt)
        self.fields = fields
        self._second: tuple[int | None, str] = (None, "")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        pairs = []
        for name in self.fields:
            value = getattr(record, name, None)
            text = "-" if value is None else str(value)
            if _QUOTED.search(text):
                text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            pairs.append(f"{name}={text}")
        return f"{base} {' '.join(pairs)}"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        # One line per webhook: the second's text is made once per second, not once per line.
        second, text = self._second
        if second != int(record.created):
            text = super().formatTime(record).rpartition(",")[0]
            self._second = (int(record.created), text)
        return f"{text},{int(record.msecs):03d}"


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record, like logging's last resort."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _handler(json_lines: bool, fields: tuple) -> logging.Handler:
    handler = StderrHandler()
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                timestamp="time",
                rename_fields={"levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", fields)
        )
    handler.viberwatch = True  # marks our handler, replaced when the app is built again
    return handler


def configure(json_lines: bool) -> None:
    for logger, fields in (
        (log, FIELDS),
        (logging.getLogger("viberwatch.spool"), SPOOL_FIELDS),
        # The live wake-up channel between processes: one line when it is lost, one when back.
        (logging.getLogger("viberwatch.live"), ()),
    ):
        for old in [h for h in logger.handlers if getattr(h, "viberwatch", False)]:
            logger.removeHandler(old)
        logger.addHandler(_handler(json_lines, fields))
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _endpoint() -> str | None:
    return WEBHOOK_ENDPOINTS.get(request.endpoint or "")


def _start() -> None:
    if _endpoint():
        g.webhook_started = time.perf_counter()


def _outcome(status: int) -> str:
    result = g.get("webhook_result")
    if result is not None:
        return result.outcome
    if status in REFUSED_STATUSES:
        return "refused"
    return "error" if status >= 500 else "rejected"


def _finish(response):
    endpoint = _endpoint()
    started = g.pop("webhook_started", None)
    if endpoint is None or started is None:
        return response
    seconds = time.perf_counter() - started
    record_webhook(
        endpoint,
        g.get("webhook_result"),
        _outcome(response.status_code),
        response.status_code,
        seconds,
        request.remote_addr,
    )
    return response


def record_webhook(
    endpoint: str, result, outcome: str, status: int, seconds: float, remote_addr: str | None
) -> None:
    """A webhook's log line and metrics, wherever it was answered (a request thread, or the
    worker's event loop: app/webhooks/loop.py)."""
    metrics.observe_webhook(endpoint, outcome, seconds)
    log.info(
        "webhook",
        extra={
            "endpoint": endpoint,
            "requestId": result.request_id if result is not None else None,
            "outcome": outcome,
            "status": status,
            "durationMs": round(seconds * 1000, 2),
            "remoteAddr": remote_addr,
        },
    )


def _failed(exc):
    # after_request does not run for an unhandled error; the request still gets its line.
    if exc is not None and g.get("webhook_started") is not None:
        started = g.pop("webhook_started")
        seconds = time.perf_counter() - started
        endpoint = _endpoint() or "unknown"
        metrics.observe_webhook(endpoint, "error", seconds)
        log.error(
            "webhook",
            extra={
                "endpoint": endpoint,
                "requestId": None,
                "outcome": "error",
                "status": 500,
                "durationMs": round(seconds * 1000, 2),
                "remoteAddr": request.remote_addr,
            },
        )


def register(app: Flask) -> None:
    value = app.config["LOG_JSON"]
    json_lines = (
        value.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(value, str)
        else bool(value)
    )
    configure(json_lines)
    redact_logger(logging.getLogger("werkzeug"))
    # First of all before_request hooks, so the duration covers authentication too.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_finish)
    app.teardown_request(_failed)
