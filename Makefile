# The two commands: `make run` (UI + daemon on the embedded engines) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export OPTIINFRA_HOME ?= $(CURDIR)/.optiinfra
export DAGSTER_HOME ?= $(OPTIINFRA_HOME)/dagster
# Keep litellm from fetching its model price map from the network at import.
export LITELLM_LOCAL_MODEL_COST_MAP := True
HOST ?= 127.0.0.1
PORT ?= 3000
# The customer portal (portal/): its own port; like the Dagster UI it binds this machine only by default.
PORTAL_HOST ?= 127.0.0.1
PORTAL_PORT ?= 3001
# Test workers (pytest-xdist): one per core, at most 4 (each holds its own Dagster, chdb and Qdrant);
# `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= auto

.PHONY: run test lint format bench venv dagster-home clean chromium

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# Dagster reads its instance config from $DAGSTER_HOME/dagster.yaml: SQLite storage by default,
# dagster-postgres when OPTIINFRA_DAGSTER_PG_URL is set.
dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@if [ -n "$${OPTIINFRA_DAGSTER_PG_URL:-}" ]; then cp deploy/dagster-postgres.yaml $(DAGSTER_HOME)/dagster.yaml; \
	 else cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml; fi

run: venv dagster-home
	@$(BIN)/optiinfra check
	@echo "OptiInfra: Dagster UI on http://$(HOST):$(PORT) — state in $(OPTIINFRA_HOME)"
	@echo "  (the Dagster UI has no login: keep it on 127.0.0.1 or behind an authenticating proxy; docs/portal.md)"
	@$(BIN)/python -m portal --host $(PORTAL_HOST) --port $(PORTAL_PORT) & portal=$$!; \
	 trap 'kill $$portal 2>/dev/null' EXIT INT TERM; \
	 $(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

# PostgreSQL for the store tests: scripts/ensure-postgres.sh starts (or installs) one and prints its URL.
# Under CI (CI=true) a missing PostgreSQL fails the run instead of skipping those tests.
test: venv chromium
	@set -o pipefail; \
	url=$$(scripts/ensure-postgres.sh) || { [ -z "$${CI:-}" ] || exit 1; url=""; \
	  echo "make test: no PostgreSQL; its tests will be skipped (see README)"; }; \
	OPTIINFRA_TEST_DATABASE_URL="$$url" OPTIINFRA_REQUIRE_POSTGRES=$${CI:+1} $(BIN)/pytest -q -n $(TEST_WORKERS) --maxprocesses 4

# The portal's browser tests drive Debian's chromium (browsers cannot be downloaded): install it when
# missing and we are root with apt-get; otherwise those tests skip, saying why.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null; } || \
	  echo "make test: no chromium; the portal's browser tests will be skipped"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: venv
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/approval_sensor.py
	$(BIN)/python bench/sandbox_generate.py
	$(BIN)/python bench/full_pass.py --instances 1000
	$(BIN)/python bench/right_sizing.py --instances 300 --seeds 1 2 3
	$(BIN)/python bench/autoscaling_replay.py
	$(BIN)/python bench/consolidation.py

clean:
	rm -rf $(OPTIINFRA_HOME)
