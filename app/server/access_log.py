"""The log gunicorn.conf.py plugs into gunicorn: its access and error logs, which never
write a secret."""

from __future__ import annotations

from gunicorn.glogging import Logger

from ..observability.redaction import REDACTED, redact, redact_logger

# Request headers that carry credentials, in gunicorn's "{name}i" atom form.
SECRET_HEADER_ATOMS = ("{authorization}i", "{cookie}i", "{x-webhook-token}i")


class RedactingLogger(Logger):
    """gunicorn's logger, with ?token= values (and credential headers, should an access log
    format name them) redacted in every access log atom, and ?token= values redacted in its
    error log (which writes the line of a request it refuses)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        redact_logger(self.error_log)

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if isinstance(value, str):
                atoms[key] = redact(value)
        for key in SECRET_HEADER_ATOMS:
            if key in atoms:
                atoms[key] = REDACTED
        return atoms
