# One target per task. Every target creates .venv and installs the pinned versions first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: help venv demo test lint format bench clean

help:
	@echo "make demo    run the lab end to end on the embedded digits data (ARGS='--json out.json')"
	@echo "make test    lint, then every test"
	@echo "make lint    ruff"
	@echo "make bench   print the speed figures (training, cache, profiling)"
	@echo "make clean   remove .venv and build leftovers"

venv: $(STAMP)

# torch is pinned to 2.13.0 in the lock file: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/int8lab demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_foundation.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
