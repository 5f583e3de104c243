# Both targets bootstrap .venv from nothing, so a fresh clone needs only `make run` / `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test venv browser lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade "pip>=23"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[worker,dev]"
	touch $(STAMP)

venv: $(STAMP)

# Debian's Chromium for the dashboard's browser tests: Playwright drives this one and never
# downloads a browser of its own (`playwright install` cannot work on a closed network).
$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

browser: $(CHROMIUM)

# API + one worker on SQLite under ./var, dashboard on http://$(HOST):$(PORT)/
run: $(STAMP)
	$(BIN)/thresher up --host $(HOST) --port $(PORT)

test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check core store service workers cli thresher migrations tests bench examples
	$(BIN)/mypy core store service workers cli thresher
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@# The same suite again on PostgreSQL where one is reachable (the slow SQLite walkthrough and
	@# zoo training are not repeated).
	@# Tests that bring their own database (own_database) ran in the first pass already.
	@if $(BIN)/python -c "import sys; from tests.conftest import POSTGRES; sys.exit(not POSTGRES)"; then \
		THRESHER_TEST_BACKEND=postgresql $(BIN)/python -m pytest -m "not slow and not own_database" $(PYTEST_ARGS); \
	else \
		echo "PostgreSQL is not reachable: the PostgreSQL pass was skipped"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check core store service workers cli thresher migrations tests bench examples
	$(BIN)/mypy core store service workers cli thresher
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/magnitude_search.py

clean:
	rm -rf $(VENV) var .pytest_cache
