"""/metrics: off by default, guarded by a token and/or an allow-list, parsed as Prometheus text."""

from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.alerts import notices as alerts
from app.records.models import db
from support.bodies import post_json
from support.fixtures import fixture_json
from support.servers import production_process, worker_pids
from support.timed_ingest import receipt

TOKEN = "s3cret-metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, name=None) -> dict:
    return {
        tuple(sorted(s.labels.items())): s.value
        for s in family.samples
        if name is None or s.name == name
    }


@pytest.fixture
def app_config(app_config):
    app_config.update(
        {
            "METRICS_TOKEN": TOKEN,
            "ALERT_RULES": [
                {"name": "expired", "kind": "expired_count", "threshold": 0, "window_minutes": 60}
            ],
        }
    )
    return app_config


def test_off_by_default(database_url):
    from app import create_app

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "SECRET_KEY": "x"})
    assert app.test_client().get("/metrics").status_code == 404


def test_token_required(anon_client):
    assert anon_client.get("/metrics").status_code == 403
    assert anon_client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    response = anon_client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 403 and response.get_json()["field"] == "Authorization"
    assert anon_client.get("/metrics", headers=AUTH).status_code == 200


def test_allow_list(app_config):
    from app import create_app

    app_config.pop("METRICS_TOKEN")
    app = create_app({**app_config, "METRICS_ALLOW_NETWORKS": "10.0.0.0/8, 127.0.0.1"})
    client = app.test_client()
    with app.app_context():
        db.create_all()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.2.3.4"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 403
    both = create_app(
        {**app_config, "METRICS_TOKEN": TOKEN, "METRICS_ALLOW_NETWORKS": "10.0.0.0/8"}
    )
    # With both set, both must hold.
    assert (
        both.test_client()
        .get("/metrics", headers=AUTH, environ_base={"REMOTE_ADDR": "192.0.2.7"})
        .status_code
        == 403
    )


def test_metrics_from_database_and_process(app, anon_client):
    dr = "/webhooks/viber/dr"
    body = fixture_json("dr_delivered")
    assert post_json(anon_client, dr, body).status_code == 200
    assert post_json(anon_client, dr, body).status_code == 200  # duplicate
    assert post_json(anon_client, dr, {**body, "status": "read"}).status_code == 422
    assert (
        post_json(anon_client, "/webhooks/viber/message", fixture_json("reply_text")).status_code
        == 200
    )
    with app.app_context():
        receipt(datetime(2026, 3, 1, 12, 0, tzinfo=UTC), "X1", "expired")
        alerts.evaluate(datetime(2026, 3, 1, 12, 5, tzinfo=UTC))
    response = anon_client.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    fams = families(response.get_data(as_text=True))

    webhooks = samples(fams["viberwatch_webhooks_received"], "viberwatch_webhooks_received_total")
    assert webhooks[(("endpoint", "dr"), ("outcome", "accepted"))] == 2  # the fixture and X1
    assert webhooks[(("endpoint", "dr"), ("outcome", "duplicate"))] == 1
    assert webhooks[(("endpoint", "dr"), ("outcome", "rejected"))] == 1
    assert webhooks[(("endpoint", "message"), ("outcome", "accepted"))] == 1

    messages = samples(fams["viberwatch_messages"])
    # The reply's traced message is known but has no receipt: pending.
    assert messages == {
        (("status", "delivered"),): 1,
        (("status", "expired"),): 1,
        (("status", "pending"),): 1,
    }

    assert samples(fams["viberwatch_alert_firing"]) == {(("rule", "expired"),): 1}
    assert samples(fams["viberwatch_alert_value"]) == {(("rule", "expired"),): 1}
    assert samples(fams["viberwatch_live_connections"]) == {(): 0}

    latency = fams["viberwatch_webhook_duration_seconds"]
    counts = samples(latency, "viberwatch_webhook_duration_seconds_count")
    # This process answered these four webhook requests (X1 went straight to ingest).
    assert counts[(("endpoint", "dr"), ("outcome", "accepted"))] >= 1
    assert counts[(("endpoint", "dr"), ("outcome", "rejected"))] >= 1
    assert counts[(("endpoint", "message"), ("outcome", "accepted"))] >= 1
    buckets = [
        s for s in latency.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
    ]
    assert buckets and all(b.value >= 1 for b in buckets)


FIRST_OBSERVATIONS = """
import sys, threading
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from app.observability import metrics

sys.setswitchinterval(1e-6)  # threads taking turns as often as they can
start = threading.Barrier(16)

def first_request():
    start.wait()
    metrics.observe_webhook("dr", "accepted", 0.01)

threads = [threading.Thread(target=first_request) for _ in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
registry = CollectorRegistry()
MultiProcessCollector(registry)
print(registry.get_sample_value(
    "viberwatch_webhook_duration_seconds_count", {"endpoint": "dr", "outcome": "accepted"}
))
"""


def test_the_first_requests_of_a_worker_are_all_counted(tmp_path):
    """Sixteen request threads of a fresh worker observe at once: the process makes its
    instruments once, so no thread's observation overwrites another's in the shared file."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for attempt in range(5):
        prom = tmp_path / f"prom{attempt}"
        prom.mkdir()
        out = subprocess.run(
            [sys.executable, "-c", FIRST_OBSERVATIONS],
            cwd=root,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert float(out) == 16


def test_latency_adds_up_across_gunicorn_workers(tmp_path, database_url):
    """Two worker processes: every scrape, whichever worker answers, counts all requests."""
    import os

    import httpx

    from app import create_app

    if not database_url.startswith("sqlite"):
        database_url = "sqlite:///" + str(tmp_path / "workers.db")
    setup = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "SECRET_KEY": "x"})
    with setup.app_context():
        db.create_all()
        db.engine.dispose()
    env = {
        "DATABASE_URL": database_url,
        "VIBERWATCH_SECRET_KEY": "x",
        "VIBERWATCH_METRICS_TOKEN": TOKEN,
        "VIBERWATCH_ALERT_INTERVAL": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "4",
    }
    with production_process(env, tmp_path / "gunicorn.log") as (base, master):
        body = fixture_json("dr_delivered")
        prom = tmp_path / "prom"

        def histogram_files():
            # The workers' (the ingest committer keeps one too, for its batch sizes).
            workers = {f"histogram_{pid}.db" for pid in worker_pids(master.pid)}
            return [f for f in os.listdir(prom) if f in workers]

        def post(i):
            with httpx.Client(base_url=base, timeout=10) as one:
                return one.post(
                    "/webhooks/viber/dr", json={**body, "requestId": f"W{i}"}
                ).status_code

        # The kernel decides which worker accepts a connection: post concurrent batches until
        # both workers have answered some (bounded), then check every scrape counts them all.
        from concurrent.futures import ThreadPoolExecutor

        posted = 0
        with ThreadPoolExecutor(8) as pool:
            for _ in range(25):
                assert set(pool.map(post, range(posted, posted + 8))) == {200}
                posted += 8
                if len(histogram_files()) == 2:
                    break
        # Both workers kept their own share of the histogram on disk.
        assert len(histogram_files()) == 2
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(6):
                scrape = http.get("/metrics", headers={**AUTH, "Connection": "close"})
                assert scrape.status_code == 200
                fams = families(scrape.text)
                counts = samples(
                    fams["viberwatch_webhook_duration_seconds"],
                    "viberwatch_webhook_duration_seconds_count",
                )
                assert counts[(("endpoint", "dr"), ("outcome", "accepted"))] == posted
                received = samples(
                    fams["viberwatch_webhooks_received"], "viberwatch_webhooks_received_total"
                )
                assert received[(("endpoint", "dr"), ("outcome", "accepted"))] == posted
