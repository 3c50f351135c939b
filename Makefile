# viberwatch: `make run` serves the dashboard, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
HTMX_VERSION ?= 2.0.11
HTMX_WS_VERSION ?= 2.0.4
CHARTJS_VERSION ?= 4.6.1

.PHONY: install run test vendor clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/viberwatch init-db
	$(BIN)/viberwatch urls --host $(HOST) --port $(PORT)
	$(BIN)/viberwatch run --host $(HOST) --port $(PORT)

test: install
	$(BIN)/pytest

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
