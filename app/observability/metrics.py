"""/metrics in the Prometheus text format, for the operator's monitoring.

Off unless METRICS_TOKEN or METRICS_ALLOW_NETWORKS is set. Under gunicorn each worker is a
process, so a counter kept in memory would show one worker's share on each scrape. Hence:
- what the database knows is read from it at scrape time, exact across workers and
  restarts: webhooks received by endpoint and outcome (every body is kept), messages by
  status, alert states;
- what it does not know (webhook latency, open live connections, whether the live wake-up
  channel is reached) lives in prometheus_client metrics, which add up across workers in its
  multiprocess mode when the environment sets PROMETHEUS_MULTIPROC_DIR (an empty directory,
  wiped before the server starts), and are per process otherwise.
"""

from __future__ import annotations

import functools
import hmac
import threading
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, abort, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func
from sqlalchemy.exc import SQLAlchemyError

from .. import config, ingest
from ..auth.security import address_in, request_client_address
from ..core.periodic import Periodic, start_with_requests
from ..core.services import services
from ..errors import error_response
from ..records.models import AlertState, Message, RawBody, db
from .health import live_channel

bp = Blueprint("metrics", __name__)

# Seconds between samples of this process's open live connections and live channel in
# multiprocess mode.
LIVE_SAMPLE_SECONDS = 5.0


@dataclass(frozen=True)
class Instruments:
    webhook_seconds: Histogram
    ingest_batch: Histogram
    live_connections: Gauge
    live_channel_up: Gauge


_making = threading.Lock()


def instruments() -> Instruments:
    """This process's prometheus_client metrics, made on first use: in multiprocess mode each
    writes a file, and gunicorn's master, which imports this module, must write none.

    Made once under a lock: the first requests of a worker arrive together, and two sets
    made at once would each keep their own count and overwrite each other's in the file."""
    with _making:
        return _make_instruments()


@functools.cache
def _make_instruments() -> Instruments:
    return Instruments(
        webhook_seconds=Histogram(
            "viberwatch_webhook_duration_seconds",
            "Time to answer a webhook request, by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=None,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        ),
        ingest_batch=Histogram(
            "viberwatch_ingest_batch_bodies",
            "Bodies applied per ingest transaction (group commit).",
            registry=None,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        ),
        live_connections=Gauge(
            "viberwatch_live_connections",
            "Open live (WebSocket) connections.",
            registry=None,
            multiprocess_mode="livesum",
        ),
        # The lowest over the workers: 0 while any of them finds the channel down.
        live_channel_up=Gauge(
            "viberwatch_live_channel_up",
            "1 while the live wake-up channel between processes is reached, 0 while it is down.",
            ["channel"],
            registry=None,
            multiprocess_mode="livemin",
        ),
    )


def multiprocess() -> bool:
    return bool(config.process("PROMETHEUS_MULTIPROC_DIR"))


def live_count(app: Flask) -> int:
    hub = services(app).live
    return hub.client_count() if hub is not None else 0


def observe_webhook(endpoint: str, outcome: str, seconds: float) -> None:
    instruments().webhook_seconds.labels(endpoint=endpoint, outcome=outcome).observe(seconds)


def observe_ingest_batch(_app, bodies: int) -> None:
    instruments().ingest_batch.observe(bodies)


class DatabaseCollector:
    """Metrics read from the database at scrape time."""

    def collect(self):
        webhooks = CounterMetricFamily(
            "viberwatch_webhooks_received",
            "Bodies received, by endpoint and outcome (from the raw record).",
            labels=["endpoint", "outcome"],
        )
        for endpoint, outcome, n in db.session.execute(
            db.select(RawBody.endpoint, RawBody.outcome, func.count()).group_by(
                RawBody.endpoint, RawBody.outcome
            )
        ):
            webhooks.add_metric([endpoint, outcome], n)
        yield webhooks
        messages = GaugeMetricFamily(
            "viberwatch_messages", "Messages by current status.", labels=["status"]
        )
        for status, n in db.session.execute(
            db.select(Message.status, func.count()).group_by(Message.status)
        ):
            messages.add_metric([status or "pending"], n)
        yield messages
        firing = GaugeMetricFamily(
            "viberwatch_alert_firing", "1 while an alert rule fires.", labels=["rule"]
        )
        value = GaugeMetricFamily(
            "viberwatch_alert_value", "The last measured value of an alert rule.", labels=["rule"]
        )
        configured = {r.name for r in services(current_app).alert_rules}
        for state in db.session.execute(db.select(AlertState).order_by(AlertState.rule)).scalars():
            if state.rule not in configured:
                continue
            firing.add_metric([state.rule], 1 if state.firing else 0)
            value.add_metric([state.rule], state.value or 0)
        yield firing
        yield value


class SpoolCollector:
    """The bodies waiting in this server's spool for the database, read from disk (so they
    are scraped while the database is away)."""

    def __init__(self, status):
        self.status = status

    def collect(self):
        waiting = self.status()
        yield GaugeMetricFamily(
            "viberwatch_spool_bodies",
            "Bodies kept in the spool, waiting for the database.",
            value=waiting.bodies,
        )
        yield GaugeMetricFamily(
            "viberwatch_spool_oldest_seconds",
            "Age of the oldest body waiting in the spool (0 when none).",
            value=waiting.as_json()["oldest_seconds"],
        )
        yield GaugeMetricFamily(
            "viberwatch_spool_damaged_files",
            "Spool files kept because something in them could not be applied (see the log).",
            value=waiting.damaged,
        )


def _allowed() -> bool:
    cfg = current_app.config
    token, networks = (
        cfg.get("METRICS_TOKEN"),
        current_app.config["METRICS_ALLOW_NETWORKS"],
    )
    if not token and not networks:
        abort(404)
    if networks and not address_in(request_client_address(), networks):
        return False
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), str(token).encode()
        ):
            return False
    return True


@bp.get("/metrics")
def scrape():
    """Prometheus metrics; needs the bearer token and/or an allowed source address."""
    if not _allowed():
        return error_response(
            403,
            "Authorization",
            "a valid bearer token or an allowed address is required",
            error="metrics: a valid bearer token or an allowed address is required",
        )
    registry = CollectorRegistry()
    # This process's live gauges as they are now; in multiprocess mode the other workers' as
    # they last sampled theirs.
    sample_live(current_app)
    if multiprocess():
        MultiProcessCollector(registry)
    else:
        own = instruments()
        registry.register(own.webhook_seconds)
        registry.register(own.ingest_batch)
        registry.register(own.live_connections)
        registry.register(own.live_channel_up)
    registry.register(SpoolCollector(services(current_app).writer.spooler.status))
    registry.register(DatabaseCollector())
    try:
        body = generate_latest(registry)
    except SQLAlchemyError:
        db.session.rollback()
        raise
    return Response(body, 200, content_type=CONTENT_TYPE_LATEST)


def sample_live(app: Flask) -> None:
    """This process's open live connections, and its live channel once it has used it."""
    own = instruments()
    own.live_connections.set(live_count(app))
    channel = live_channel(app)
    if channel is not None:
        own.live_channel_up.labels(channel=channel.channel).set(1 if channel.up else 0)


def register(app: Flask) -> None:
    ingest.batch_committed.connect(observe_ingest_batch, sender=app)
    app.register_blueprint(bp)
    if multiprocess():
        # Keeps this process's share of the live gauges current.
        sampler = Periodic("metrics-live", lambda: LIVE_SAMPLE_SECONDS, lambda: sample_live(app))
        services(app).metrics_sampler = sampler
        start_with_requests(app, sampler)
