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

.PHONY: run test lint format bench venv dagster-home clean

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
	$(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

# PostgreSQL for the store tests: scripts/ensure-postgres.sh starts (or installs) one and prints its URL.
# Under CI (CI=true) a missing PostgreSQL fails the run instead of skipping those tests.
test: venv
	@set -o pipefail; \
	url=$$(scripts/ensure-postgres.sh) || { [ -z "$${CI:-}" ] || exit 1; url=""; \
	  echo "make test: no PostgreSQL; its tests will be skipped (see README)"; }; \
	OPTIINFRA_TEST_DATABASE_URL="$$url" OPTIINFRA_REQUIRE_POSTGRES=$${CI:+1} $(BIN)/pytest -q

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

clean:
	rm -rf $(OPTIINFRA_HOME)
