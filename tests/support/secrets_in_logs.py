"""Every log line the servers of the suite write, kept so that the suite can show no secret
it used ever reached one: the production servers' log files, and the records of the app's
loggers in this process (the development server's request lines, the webhook and spool lines,
gunicorn's error log)."""

from __future__ import annotations

import logging
from pathlib import Path

# Secrets shorter than this are words of test names too ("x", "wrong"): not looked for.
SHORTEST = 8
# Environment and config names whose values are secrets.
SECRET_NAMES = ("TOKEN", "SECRET", "PASSWORD")

log_files: set[Path] = set()
secrets: set[str] = set()
lines: list[str] = []

LOGGERS = ("", "werkzeug", "viberwatch.webhooks", "viberwatch.spool", "gunicorn.error")


def add_secret(value) -> None:
    if isinstance(value, str) and len(value) >= SHORTEST:
        secrets.add(value)


def add_secrets_of(mapping: dict) -> None:
    for name, value in mapping.items():
        name = str(name).upper()
        if any(part in name for part in SECRET_NAMES) and not name.endswith("_FILE"):
            add_secret(value)


class Keep(logging.Handler):
    """Keeps each record as it would be written: message and traceback."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is not written either
            pass


def start() -> Keep:
    handler = Keep()
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
    return handler


def stop(handler: Keep) -> None:
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)


def leaks() -> list[str]:
    """(where, secret) of every secret found in a log line."""
    found = []
    texts = [("this process", "\n".join(lines))]
    for path in sorted(log_files):
        try:
            texts.append((str(path), path.read_text(errors="replace")))
        except FileNotFoundError:
            continue
    for where, text in texts:
        for secret in sorted(secrets):
            if secret in text:
                at = text.index(secret)
                found.append(f"{where}: {text[max(0, at - 120) : at + 40]!r}")
    return found
