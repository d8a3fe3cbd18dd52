# Shoal: `make run` starts the server, `make test` sets up and runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	./scripts/install-system-deps
	./scripts/install-browser

run: $(STAMP)
	$(BIN)/shoal demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: system-deps $(STAMP) lint typecheck unit

bench: $(STAMP) system-deps
	$(BIN)/python bench/coap.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
