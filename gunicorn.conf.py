"""Production server settings: `gunicorn -c gunicorn.conf.py 'app:create_app()'` (see `make serve`).

Threaded workers, because each open dashboard holds one WebSocket (flask-sock) on a thread.
Every setting can be overridden on the command line or with GUNICORN_CMD_ARGS.
"""

import os

from app.config import process as from_environment

bind = f"{from_environment('HOST')}:{from_environment('PORT')}"
workers = from_environment("WEB_CONCURRENCY")
# gthread, whose main loop also reads each request whole before a thread serves it, so slow
# clients cannot hold the threads (app/server/worker.py; GUNICORN_HEAD_TIMEOUT, GUNICORN_BODY_TIMEOUT).
worker_class = "app.server.worker.SlowClientWorker"
threads = from_environment("GUNICORN_THREADS")
# WebSockets stay open for hours; the worker timeout only guards against a hung worker.
timeout = 60
graceful_timeout = 10
keepalive = 5
accesslog = "-"
# The webhook URLs carry ?token=: the access log writes it as [redacted].
logger_class = "app.server.access_log.RedactingLogger"


# Metrics of several workers add up when PROMETHEUS_MULTIPROC_DIR is set (see app/observability/metrics.py):
# its files start empty with each server, and an exited worker's live gauges stop counting.
def on_starting(server):
    folder = from_environment("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.remove(os.path.join(folder, name))


def child_exit(server, worker):
    if from_environment("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# A worker told to stop (SIGTERM) has answered its requests; the bodies its ingest writer
# still holds are committed before the process ends.
def worker_exit(server, worker):
    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        from app import ingest

        ingest.stop(app)


# One process, the ingest committer, applies the bodies of every worker (app/ingest/committer/):
# started before the workers, stopped after them (it answers what it has read first).
_committer = {}


def when_ready(server):
    if from_environment("INGEST_COMMITTER"):
        from app.ingest.committer.supervisor import Supervisor

        try:
            _committer["supervisor"] = supervisor = Supervisor()
            supervisor.start()
        except OSError as exc:  # no temporary folder, no process: the workers apply themselves
            server.log.error("the ingest committer cannot be started (%s)", exc)


def on_exit(server):
    supervisor = _committer.get("supervisor")
    if supervisor is not None:
        pid = supervisor.stop(graceful_timeout + 20)
        if pid is not None and from_environment("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)
