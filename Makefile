# Two commands: `make run` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
CQRSKIT_DATABASE_URL ?= sqlite:///data/orders.db
export CQRSKIT_DATABASE_URL

.PHONY: run test lint typecheck pytest venv dev clean system-packages test-faults soak

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

run: $(VENV)/.installed
	$(BIN)/cqrskit serve --host $(HOST) --port $(PORT)

lint: dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: dev
	$(BIN)/mypy

pytest: dev
	$(BIN)/pytest

test: lint typecheck pytest

# Debian packages for the fault and browser tests (chromium, fiu-utils, faketime).
system-packages:
	scripts/install-system-packages

# The reliability suite at its larger sizes (fits CI's time limit), and a long soak for releases.
test-faults: dev
	CQRSKIT_FAULT_TIER=full $(BIN)/pytest tests/reliability -m faults

soak: dev
	CQRSKIT_FAULT_TIER=soak $(BIN)/pytest tests/reliability -m faults -x

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

.PHONY: bench bench-quick
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench --full

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m bench --quick
