# make setup: build .venv from nothing; make serve: API + workers on SQLite; make test: the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: setup
	-$(BIN)/mnist-jobs data prepare  # a failure is reported; jobs then fail with the same message
	$(BIN)/mnist-jobs serve

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.api_load

clean:
	rm -rf $(VENV) var .pytest_cache
