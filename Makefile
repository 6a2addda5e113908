# make setup: build .venv from nothing; make serve: API + workers on SQLite; make test: lint, then
# the whole suite; make test-fast: the unit half (no processes, no sockets); make lint: ruff + mypy.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: setup
	-$(BIN)/mnist-jobs data prepare  # a failure is reported; jobs then fail with the same message
	$(BIN)/mnist-jobs serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -n 2 tests/unit

bench: setup
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.api_load

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
