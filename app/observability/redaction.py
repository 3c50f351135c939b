"""Secrets out of log lines: what both servers' request logs go through (no Flask, no
metrics, so gunicorn's master can load it)."""

from __future__ import annotations

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
