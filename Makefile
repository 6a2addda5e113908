# make setup: build .venv from nothing (what serving needs: the server and its client); make serve:
# API + workers on SQLite; make test: lint, the docs, then the whole suite (SQLite and PostgreSQL); make
# test-fast: the unit half (no processes, no sockets); make test-postgres: the database tests on
# PostgreSQL only; make lint: ruff + mypy. The test and lint tools install with the first of those.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup setup-dev serve test test-fast test-postgres test-browser lint docs format bench gpu-check clean

setup: $(STAMP)

# One pip call for both distributions, so pip takes the client from this checkout. pip shows its
# progress: the first install brings torch with its CUDA wheels (.venv is about 6 GB) and takes minutes.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on -e ./clients/python -e .
	@# A venv from before the client split: removing the old server's files took its mnist-jobs script.
	test -x $(BIN)/mnist-jobs || $(BIN)/python -m pip install --no-deps --force-reinstall -e ./clients/python
	touch $(STAMP)
	@echo "mnist-jobs is installed in $(VENV): run 'source $(VENV)/bin/activate' to call it as mnist-jobs"

# The test and lint tools (pytest, ruff, mypy, selenium, schemathesis, onnxruntime, ...): only the
# targets that need them install them.
setup-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --progress-bar on -e ./clients/python -e '.[test]'
	touch $(DEV_STAMP)

serve: setup
	@# The address as MNIST_JOBS_HOST / MNIST_JOBS_PORT set it (a .env file is read by serve only).
	@echo "serving on http://$${MNIST_JOBS_HOST:-127.0.0.1}:$${MNIST_JOBS_PORT:-8000}; in another shell: source $(VENV)/bin/activate; mnist-jobs --help"
	@test -z "$${MNIST_JOBS_PORT:-}" || echo "(there, export MNIST_JOBS_PORT=$${MNIST_JOBS_PORT} too, or MNIST_JOBS_URL=http://127.0.0.1:$${MNIST_JOBS_PORT})"
	-$(BIN)/mnist-jobs data prepare  # a failure is reported; jobs then fail with the same message
	$(BIN)/mnist-jobs serve

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The documentation site (docs/, mkdocs.yml) into var/site/, in strict mode: a broken link, a missing
# anchor or a page left out of the nav fails it.
docs: setup-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: lint docs
	$(BIN)/python -m pytest -q

# test-fast leaves out the PostgreSQL half (it would add ~17 s on two cores, past a minute).
test-fast: setup-dev
	$(BIN)/python -m pytest -q -n 2 tests/unit -k "not postgresql"

# The PostgreSQL half alone: the tests marked `databases`, on a throwaway cluster the tests start
# (bench/postgres.py) or on MNIST_JOBS_TEST_POSTGRES_URL. `make test` runs them too.
test-postgres: setup-dev
	$(BIN)/python -m pytest -q -m databases -k postgresql

# The dashboard in headless Chromium (installed with apt-get when missing; skipped, saying why, when
# that is not possible). `make test` runs these too.
test-browser: setup-dev
	$(BIN)/python -m pytest -q tests/browser

bench: setup-dev
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.api_load

# On a CUDA machine: the tutorial's four jobs on cuda:0 through a real worker against the CPU, and
# packed FC on the GPU against alone (bench/gpu_check.py); without CUDA it says so and passes.
gpu-check: setup-dev
	$(BIN)/python -m bench.gpu_check

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
