"""What the tests share besides pytest fixtures: the bodies NXCLOUD sends, signing in, real
servers (the app threaded, gunicorn, a fake NXCLOUD, a cuttable TCP proxy), the browser,
a WebSocket client of /ws, data sets fed through the real ingest, children a test stops with
Ctrl-C, and waiting for a condition.

The fixtures themselves live in tests/conftest.py and are built from these modules."""
