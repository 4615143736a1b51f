# Commands (contract): make run, make test, make bench, make lint.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run backfill test lint bench bench-smoke venv clean

RUN_STAMP := $(VENV)/.installed-runtime
NATIVE_STAMP := $(VENV)/.installed-native

venv: $(STAMP) $(NATIVE_STAMP)

# make test, lint, bench: the runtime and the test, lint and benchmark tools.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt -c constraints.txt
	touch $(STAMP) $(RUN_STAMP)

# make run: the runtime only (requirements.txt), one line per package as pip goes.
$(RUN_STAMP): requirements.txt constraints.txt
	@echo "[make run] installing the runtime into .venv (the first time takes a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	set -o pipefail; $(BIN)/python -m pip install --progress-bar off -r requirements.txt -c constraints.txt \
	  | { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed)' || true; } | cut -c1-100
	touch $(RUN_STAMP)

# prepare's duplicate check in C (native/); without a C compiler prepare keeps it in Python.
$(NATIVE_STAMP): native/fingerprints.c native/setup.py native/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q ./native \
	  || echo "[native] not built: prepare keeps its duplicate-check fingerprints in Python (slower)"
	touch $(NATIVE_STAMP)

# make run: the emulator; make run API=openai: the real, paid API (OPENAI_API_KEY must be set).
run: $(RUN_STAMP) $(NATIVE_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/run_local.py --api "$(or $(API),emulator)"

# Backfill dates on the running `make run` stack:
#   make backfill FROM=2024-01-01 TO=2024-01-03 [REPROCESS=completed] [CONF='{"poll_interval": 10}']
backfill: $(RUN_STAMP)
	$(BIN)/python scripts/backfill.py --from-date "$(FROM)" --to-date "$(TO)" --reprocess "$(or $(REPROCESS),none)" --conf '$(or $(CONF),{})'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PYTHONPATH=plugins $(BIN)/lint-imports --no-cache

test: $(STAMP) $(NATIVE_STAMP) lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) $(NATIVE_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench $(BENCH_ARGS)

bench-smoke: $(STAMP) $(NATIVE_STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
