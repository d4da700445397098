# The two commands a newcomer needs: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run demo test lint typecheck bench clean

$(BIN)/recallwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/recallwatch

# Embedded stack (Tansu broker, chdb, worker, API on :8000) with the simulator and an injected defect.
run: install
	$(BIN)/recallwatch run --simulate

demo: install
	$(BIN)/recallwatch demo

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf .recallwatch .pytest_cache .mypy_cache .ruff_cache
