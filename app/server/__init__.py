"""The production server's own parts, which gunicorn.conf.py plugs into gunicorn: the worker
that reads each request whole in its event loop (worker), the webhooks it answers there
without a thread (loop), and the logs that never write a secret (access_log). The ingest
committer the master starts is the ingest engine's (app/ingest/committer/)."""
