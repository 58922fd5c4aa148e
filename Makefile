# canary-rollouts: `make demo` runs the demo, `make test` runs every test. Both set up .venv first, and
# what they need besides it (`make services`: scripts/setup-services).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Airflow runs from this checkout: DAGs, plugins and a private AIRFLOW_HOME (SQLite).
export AIRFLOW_HOME ?= $(CURDIR)/.state/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE := True
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup services demo test test-fast faults lint bench airflow lock clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q -p $(PY) -r requirements.txt
	$(VENV)/bin/uv pip install -q -p $(PY) --no-deps -e .
	@# This machine sets PYTHONDONTWRITEBYTECODE=1: compile once, or every `import airflow` costs ~3 s.
	$(PY) -m compileall -q -j 2 $(VENV)/lib > /dev/null || true
	@touch $(STAMP)

# Prometheus (Debian's package), the MLflow server's own virtualenv; checks PostgreSQL and Redis.
# Installs only what is missing (as root or with sudo), says how to install what it cannot.
services: setup
	@scripts/setup-services

# `make demo METRICS=prometheus` lets the gate read a real Prometheus scraping the serving layer.
demo: setup
	@$(if $(filter prometheus,$(METRICS)),scripts/setup-services prometheus,true)
	$(PY) -m canary.devstack.demo $(if $(METRICS),--metrics $(METRICS))

# Three workers on two cores: most of the suite waits on servers and rollout stages, not the CPU.
# Tests sharing a costly fixture stay on one worker (tests/conftest.py: pytest_xdist_make_scheduler).
PYTEST_WORKERS ?= 3

test: services
	$(PY) -m pytest -n $(PYTEST_WORKERS)

test-fast: services
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow and not e2e and not gx"

# The fault-injection runs with the fail-safe invariant checked after each (also part of `make test`), on one
# worker so that their table and JSON line can be printed at the end.
faults: setup
	$(PY) -m pytest -n 0 -q -rN tests/e2e/test_faults_e2e.py

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/stats_bench.py
	$(PY) bench/replay_bench.py
	$(PY) bench/shadow_bench.py
	$(PY) bench/segments_bench.py

airflow: setup
	@echo "Airflow UI on http://localhost:8080 (credentials printed below; AIRFLOW_HOME=$(AIRFLOW_HOME))"
	$(VENV)/bin/airflow standalone

lock:
	$(VENV)/bin/uv pip compile -q -p 3.11 requirements.in -o requirements.txt

clean:
	rm -rf .state .pytest_cache
