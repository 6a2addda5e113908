# make setup: build .venv from nothing; make serve: API + workers on SQLite; make test: lint, then
# the whole suite (SQLite and PostgreSQL); make test-fast: the unit half (no processes, no sockets);
# make test-postgres: the database tests on PostgreSQL only; make lint: ruff + mypy.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test test-fast test-postgres test-browser lint format bench gpu-check clean

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

# test-fast leaves out the PostgreSQL half (it would add ~17 s on two cores, past a minute).
test-fast: setup
	$(BIN)/python -m pytest -q -n 2 tests/unit -k "not postgresql"

# The PostgreSQL half alone: the tests marked `databases`, on a throwaway cluster the tests start
# (bench/postgres.py) or on MNIST_JOBS_TEST_POSTGRES_URL. `make test` runs them too.
test-postgres: setup
	$(BIN)/python -m pytest -q -m databases -k postgresql

# The dashboard in headless Chromium (installed with apt-get when missing; skipped, saying why, when
# that is not possible). `make test` runs these too.
test-browser: setup
	$(BIN)/python -m pytest -q tests/browser

bench: setup
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.api_load

# On a CUDA machine: the tutorial's four jobs on cuda:0 through a real worker against the CPU, and
# packed FC on the GPU against alone (bench/gpu_check.py); without CUDA it says so and passes.
gpu-check: setup
	$(BIN)/python -m bench.gpu_check

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
