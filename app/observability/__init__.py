"""Watching the service: /healthz (health), Prometheus metrics (metrics), the webhook log
lines (logs), the OpenAPI description of the HTTP interface (openapi), and the redaction of
secrets from everything logged (redaction)."""

from flask import Flask

from . import health, logs, metrics, openapi


def init_app(app: Flask) -> None:
    health.register(app)
    openapi.register(app)
    metrics.register(app)
    logs.register(app)
