"""Secrets out of log lines: what both servers' request logs go through (no Flask, no
metrics, so gunicorn's master can load it)."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

# Query parameters whose values are secrets (the webhook token): never written to a log.
SECRET_PARAMS = frozenset({"token"})
REDACTED = "[redacted]"
_PARAM_RE = re.compile(r"(^|[?&;])([^?=&;\s\"]*)=([^&;\s\"]*)")


def _redact_param(match: re.Match) -> str:
    lead, name, _value = match.groups()
    # The name as the app reads it: "tok%65n" is the token too.
    if unquote_plus(name).lower() in SECRET_PARAMS:
        return f"{lead}{name}={REDACTED}"
    return match.group(0)


def redact(text: str) -> str:
    """A request line, URL or query string with the values of secret parameters replaced."""
    return _PARAM_RE.sub(_redact_param, text) if "=" in text else text


class RedactSecrets(logging.Filter):
    """Rewrites each record's message, and the traceback it carries, with secret query values
    redacted: the development server logs every request line, gunicorn the line of a request
    it refuses, ?token= included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_logger(logger: logging.Logger) -> None:
    """Put RedactSecrets on a logger (once)."""
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())
