# viberwatch: `make run` serves the dashboard, `make test` runs the suite, `make lint` checks the code.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
HTMX_VERSION ?= 2.0.11
HTMX_WS_VERSION ?= 2.0.4
CHARTJS_VERSION ?= 4.6.1

.PHONY: install run serve test lint bench bench-campaigns bench-search bench-pages bench-live bench-live-tabs bench-reconnect bench-slow bench-soak bench-access bench-proxy bench-page wrk demo vendor clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/viberwatch db upgrade
	$(BIN)/viberwatch ensure-admin
	$(BIN)/viberwatch urls --host $(HOST) --port $(PORT)
	$(BIN)/viberwatch run --host $(HOST) --port $(PORT)

test: install
	$(BIN)/pytest
	@if [ -n "$$TEST_DATABASE_URL" ]; then \
	  echo "== the suite again, on PostgreSQL (TEST_DATABASE_URL)"; \
	  $(BIN)/pytest --db postgresql; \
	fi

# Ruff: the lint rules and the formatting (pyproject.toml); `ruff format .` applies the latter.
lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# The production server: gunicorn with threaded workers (gunicorn.conf.py), after migrating
# and, on a database with no user yet, creating the first one (its password printed once).
serve: install
	$(BIN)/viberwatch db upgrade
	$(BIN)/viberwatch ensure-admin
	HOST=$(HOST) PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py 'app:create_app()'

# wrk, the HTTP load generator of the benchmarks, from the system's packages when missing.
wrk:
	@command -v wrk >/dev/null || { SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y wrk; }

# Benchmarks (docs/benchmarks.md). BENCH_MESSAGES=20000 for a quick run; needs wrk, and
# PostgreSQL's server binaries for the soak (it runs a PostgreSQL cluster of its own).
BENCH_MESSAGES ?= 1000000
SOAK_MINUTES ?= 10
SOAK_RATE ?= 500
bench: install wrk
	$(BIN)/python bench/run.py --messages $(BENCH_MESSAGES)
	$(BIN)/python bench/live_latency.py --write-docs
	$(BIN)/python bench/live_tabs.py --write-docs
	$(BIN)/python bench/page_memory.py --minutes $(PAGE_MINUTES) --write-docs
	$(BIN)/python bench/reconnect.py --rounds $(RECONNECT_ROUNDS) --write-docs
	$(BIN)/python bench/analytics.py --messages $(BENCH_MESSAGES) --reuse
	$(BIN)/python bench/campaigns.py --messages $(BENCH_MESSAGES) --reuse --write-docs
	$(BIN)/python bench/search.py --messages $(BENCH_MESSAGES) --reuse --write-docs
	$(BIN)/python bench/pages.py --messages $(BENCH_MESSAGES) --reuse --before $(PAGES_BEFORE) \
	  --no-statistics --write-docs
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE) --write-docs
	$(BIN)/python bench/slow_clients.py --write-docs
	$(BIN)/python bench/proxy.py --write-docs
	$(BIN)/python bench/access_cost.py --before $(ACCESS_BEFORE) --messages $(ACCESS_MESSAGES) \
	  --rounds $(ACCESS_ROUNDS) --write-docs

# Only the campaigns pages: BENCH_MESSAGES messages over 200 campaigns (a seeded database
# reused), the production command with 2 workers, 30 timed requests per URL.
bench-campaigns: install
	$(BIN)/python bench/campaigns.py --messages $(BENCH_MESSAGES) --reuse --write-docs

# Only text search: BENCH_MESSAGES messages and a fifth as many replies (a seeded database
# reused), the production command with 2 workers, 30 timed requests per query.
bench-search: install
	$(BIN)/python bench/search.py --messages $(BENCH_MESSAGES) --reuse --write-docs

# Only every page and fragment at BENCH_MESSAGES messages (the search benchmark's database),
# the tree of PAGES_BEFORE beside the working tree, then PostgreSQL once more without its
# planner statistics; 20 timed requests per URL and side.
PAGES_BEFORE ?= 58f6dcd
bench-pages: install
	$(BIN)/python bench/pages.py --messages $(BENCH_MESSAGES) --reuse --before $(PAGES_BEFORE) \
	  --no-statistics --write-docs

# Only the open messages page's DOM and JS heap over PAGE_MINUTES of webhooks at 50/s
# (the issue's run is an hour: PAGE_MINUTES=60).
PAGE_MINUTES ?= 10
bench-page: install
	$(BIN)/python bench/page_memory.py --minutes $(PAGE_MINUTES) --write-docs

# Only the open messages page's reconnect: RECONNECT_ROUNDS restarts of the production server
# (down 1, 5, 15 and 30 s in turn), timed from /healthz answering to the page being live again.
RECONNECT_ROUNDS ?= 20
bench-reconnect: install
	$(BIN)/python bench/reconnect.py --rounds $(RECONNECT_ROUNDS) --write-docs

# Only the live-update latency part of the benchmarks.
bench-live: install
	$(BIN)/python bench/live_latency.py --write-docs

# Only live updates in real Chromium tabs: 10 and 50 tabs on the messages page, on SQLite and
# PostgreSQL, without and with REDIS_URL (when Redis answers), the production command with
# 2 workers; the loopback is watched for the server's side, which needs root.
bench-live-tabs: install
	$(BIN)/python bench/live_tabs.py --write-docs

# Only the send proxy's cost and the bulk registration rate.
bench-proxy: install wrk
	$(BIN)/python bench/proxy.py --write-docs

# Only what the roles and the audit log cost: the commit before them (ACCESS_BEFORE) and this
# tree side by side, ACCESS_MESSAGES messages seeded for each, ACCESS_ROUNDS alternating rounds
# of the ingest, the messages page and the export, on SQLite and then PostgreSQL.
ACCESS_BEFORE ?= a11fc0e
ACCESS_MESSAGES ?= 200000
ACCESS_ROUNDS ?= 5
bench-access: install wrk
	$(BIN)/python bench/access_cost.py --before $(ACCESS_BEFORE) --messages $(ACCESS_MESSAGES) \
	  --rounds $(ACCESS_ROUNDS) --write-docs

# Only the slow-clients part: 1,500 connections trickling a request, /healthz and a webhook probed.
bench-slow: install
	$(BIN)/python bench/slow_clients.py --write-docs

# Only the soak: SOAK_MINUTES of webhooks at SOAK_RATE/s through database locks, a PostgreSQL
# restart and a killed ingest committer; every body answered 200 checked in the database.
bench-soak: install
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES) --rate $(SOAK_RATE) --write-docs

# Serve, then play NXCLOUD against the server so the dashboard fills up live: every message
# is sent through viberwatch's send proxy (with the demo's API token and a campaign tag) to
# the played send API (on PORT+1, the server's NXCLOUD_BASE_URL), which a thread's reply box
# sends to as well (nothing reaches real NXCLOUD); receipts follow the requestIds it answers.
# The server logs to DEMO_LOG so that the terminal shows the simulator. Ctrl-C stops.
DEMO_RATE ?= 2
DEMO_DURATION ?= 300
DEMO_SEND_PORT ?= $(shell echo $$(($(PORT) + 1)))
DEMO_LOG ?= instance/demo-server.log
demo: export VIBERWATCH_NXCLOUD_BASE_URL = http://$(HOST):$(DEMO_SEND_PORT)
demo: export VIBERWATCH_NXCLOUD_ACCESS_KEY = demo-access-key
demo: export VIBERWATCH_NXCLOUD_ACCESS_SECRET = demo-access-secret
demo: export VIBERWATCH_NXCLOUD_APPKEY = DEMOAPP
demo: install
	$(BIN)/viberwatch db upgrade
	$(BIN)/viberwatch ensure-admin
	@$(BIN)/viberwatch revoke-token demo-simulator >/dev/null 2>&1 || true
	@token=$$($(BIN)/viberwatch create-token demo-simulator 2>/dev/null) || exit 1; \
	$(BIN)/viberwatch run --host $(HOST) --port $(PORT) >"$(DEMO_LOG)" 2>&1 & server=$$!; \
	trap 'kill $$server 2>/dev/null' EXIT; trap 'exit 130' INT TERM; \
	up=; for i in $$(seq 100); do \
	  $(BIN)/python -c "import httpx; httpx.get('http://$(HOST):$(PORT)/healthz', timeout=1)" 2>/dev/null && up=1 && break; \
	  sleep 0.2; \
	done; \
	if [ -z "$$up" ]; then echo "the server did not start; the end of $(DEMO_LOG):"; tail -n 20 "$(DEMO_LOG)"; exit 1; fi; \
	echo "dashboard:    http://$(HOST):$(PORT)/ (sign in, then watch it fill up)"; \
	echo "server log:   $(DEMO_LOG)"; \
	echo "NXCLOUD send: played at http://$(HOST):$(DEMO_SEND_PORT) (DEMO_SEND_PORT), behind the send proxy http://$(HOST):$(PORT)/nxcloud, for the demo's sends and the reply box"; \
	$(BIN)/viberwatch simulate --url http://$(HOST):$(PORT) --rate $(DEMO_RATE) \
	  --duration $(DEMO_DURATION) --api-token "$$token" --send-api $(HOST):$(DEMO_SEND_PORT) \
	  --through-proxy || true; \
	echo "simulator stopped; still serving http://$(HOST):$(PORT)/ until Ctrl-C (log: $(DEMO_LOG))"; \
	wait $$server

# Re-vendor the front-end files from npm; the version is part of each file name.
vendor:
	rm -rf .vendor-tmp && mkdir -p .vendor-tmp static/vendor
	cd .vendor-tmp && npm pack --silent htmx.org@$(HTMX_VERSION) htmx-ext-ws@$(HTMX_WS_VERSION) >/dev/null
	cd .vendor-tmp && for f in *.tgz; do tar xzf $$f && mv package $${f%.tgz}; done
	cp .vendor-tmp/htmx.org-$(HTMX_VERSION)/dist/htmx.min.js static/vendor/htmx-$(HTMX_VERSION).min.js
	cp .vendor-tmp/htmx-ext-ws-$(HTMX_WS_VERSION)/dist/ws.min.js static/vendor/htmx-ext-ws-$(HTMX_WS_VERSION).min.js
	cd .vendor-tmp && npm pack --silent chart.js@$(CHARTJS_VERSION) >/dev/null && mkdir chart && tar xzf chart.js-$(CHARTJS_VERSION).tgz -C chart
	cp .vendor-tmp/chart/package/dist/chart.umd.min.js static/vendor/chart-$(CHARTJS_VERSION).umd.min.js
	rm -rf .vendor-tmp

clean:
	rm -rf $(VENV) .pytest_cache
