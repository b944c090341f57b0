# One target per task. Every target creates .venv and installs the pinned versions first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=

ASSIGNMENTS := 01_weights 02_activations 03_biases 04_integer_only 05_ranges_and_bits 06_zero_points \
	07_quantization_aware_training
NBGRADER := cd autograder && ../$(BIN)/nbgrader

# Empty: what nbgrader collect gathered in autograder/submitted (the course folder's configuration says where).
SUBMISSIONS ?=
OUT ?= graded
WORKERS ?= 2

.PHONY: help venv demo test test-under-load lint format bench bench-grading bench-dask release validate grade guide clean

help:
	@echo "make demo    run the lab end to end on the embedded digits data (ARGS='--json out.json')"
	@echo "make test    lint, then every test (browser tests need chromium; PYTEST_ARGS='-m \"not browser\"' deselects them)"
	@echo "make test-under-load  the same with two busy loops beside it (a busy machine must pass too)"
	@echo "make lint    ruff"
	@echo "make bench   print the speed figures (training, cache, profiling, notebooks, feedback math)"
	@echo "make release regenerate notebooks/ from solutions/ (nbgrader generate_assignment)"
	@echo "make validate nbgrader validate on the solutions, and --invert on the released notebooks"
	@echo "make grade   autograde SUBMISSIONS (default: what nbgrader collect gathered) into OUT (default graded)"
	@echo "make bench-grading  int8lab grade against plain nbgrader autograde on 20 generated submissions"
	@echo "make bench-dask  Dask stage by stage on 30 generated students x 7 notebooks, client CPU with 4 workers; 1,000 students on N machines"
	@echo "make guide   regenerate docs/instructors-guide.md from solutions/ and the misconception catalogue"
	@echo "make clean   remove .venv and build leftovers"

venv: $(STAMP)

# torch is pinned to 2.13.0 in the lock file: an unpinned torch pulls a multi-GB CUDA build.
# The lowest Python is pyproject.toml's requires-python: said in one line, before pip fails on a locked package.
$(STAMP): requirements/lock.txt pyproject.toml
	@$(PYTHON) -c "import re, sys; low = re.search(r'requires-python = \">=([0-9.]+)', open('pyproject.toml').read())[1]; \
	sys.exit(sys.version_info[:3] < tuple(map(int, low.split('.'))) and \
	f'int8lab needs Python {low} or newer, and $(PYTHON) is {sys.version.split()[0]}: run make with PYTHON=python3.12, say')"
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

# The browser tests need a Chromium, the hub test configurable-http-proxy (npm): found or installed first, unless
# PYTEST_ARGS leaves them out.
test: lint
	@case "$(PYTEST_ARGS)" in *"not browser"*) ;; *) ./.ci/ensure-chromium ;; esac
	@case "$(PYTEST_ARGS)" in *"not hub"*) ;; *) ./.ci/ensure-http-proxy >/dev/null ;; esac
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite with two CPU-bound loops beside it, as on a busy laptop: it must pass all the same.
test-under-load: lint
	@case "$(PYTEST_ARGS)" in *"not browser"*) ;; *) ./.ci/ensure-chromium ;; esac
	@case "$(PYTEST_ARGS)" in *"not hub"*) ;; *) ./.ci/ensure-http-proxy >/dev/null ;; esac
	@$(BIN)/python -c "exec('while True: pass')" & one=$$!; \
	$(BIN)/python -c "exec('while True: pass')" & two=$$!; \
	trap 'kill $$one $$two 2>/dev/null' EXIT; \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/bench_notebooks.py
	$(BIN)/python benchmarks/bench_mathml.py

bench-grading: $(STAMP)
	$(BIN)/python benchmarks/bench_grading.py $(ARGS)

bench-dask: $(STAMP)
	$(BIN)/python benchmarks/bench_dask.py $(ARGS)

grade: $(STAMP)
	$(BIN)/int8lab grade $(SUBMISSIONS) --out $(OUT) --workers $(WORKERS)

release: $(STAMP)
	for a in $(ASSIGNMENTS); do ($(NBGRADER) generate_assignment $$a --force --no-db) || exit 1; done

guide: $(STAMP)
	$(BIN)/python autograder/make_guide.py

validate: $(STAMP)
	$(BIN)/nbgrader validate solutions/*/*.ipynb
	$(BIN)/nbgrader validate --invert notebooks/*/*.ipynb

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
