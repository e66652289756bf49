# The two commands of the README. Both set up everything they need in .venv first, from the
# lock in requirements/ (every version and hash pinned: see "Dependencies and the lock").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Hash-checked and wheels only: nothing is built from source, so no unpinned build backend runs.
PIP_INSTALL_LOCK := $(BIN)/python -m pip install --quiet --require-hashes --only-binary :all:
# The project itself, editable: its dependencies are already there (--no-deps), the locked
# setuptools builds it (--no-build-isolation) and nothing is downloaded (--no-index).
PIP_INSTALL_PROJECT := $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation \
	--no-index -e .
# uv only compiles the lock (`make lock`); pip installs it everywhere else.
UV_VERSION := 0.13.9

.PHONY: demo test lint lock bench replay-real container-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A stamp per lock file: a changed lock (or pyproject.toml) installs again on the next run.
$(VENV)/.demo-installed: requirements/demo.txt pyproject.toml | $(BIN)/python
	$(PIP_INSTALL_LOCK) --requirement requirements/demo.txt
	$(PIP_INSTALL_PROJECT)
	touch $@

$(VENV)/.dev-installed: requirements/dev.txt pyproject.toml | $(BIN)/python
	$(PIP_INSTALL_LOCK) --requirement requirements/dev.txt
	$(PIP_INSTALL_PROJECT)
	touch $@

## Run the service on its embedded default: local broker, recorded Polymarket data.
demo: $(VENV)/.demo-installed
	$(BIN)/polymarket-kafka demo $(ARGS)

## Lint, type-check and run the whole test suite with coverage (what CI runs).
## Four pytest workers even on 2 cores: most tests wait on real servers, not on the CPU
## (measured: 155 s with 2 workers, 126 s with 4 on the 2-core machine). Each worker starts
## its own Tansu and SecantusDB on free loopback ports; worksteal evens out the long tests.
## compileall first: the workers and the tests' `python -m polymarket_kafka` subprocesses
## then load bytecode instead of compiling the package again each time (PYTHONDONTWRITEBYTECODE
## is set on some machines, this one included).
TEST_WORKERS ?= 4
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy polymarket_kafka tests bench scripts
	$(BIN)/hadolint Containerfile
	$(BIN)/python -m compileall -q polymarket_kafka
	$(BIN)/python -m pytest --numprocesses=$(TEST_WORKERS) --dist=worksteal --cov --cov-report=term-missing

## Re-resolve the lock after editing the dependencies in pyproject.toml or requirements/tools.in:
## pins that still fit are kept; `make lock UPGRADE=1` moves everything to the newest releases.
## dev.txt is resolved first; demo.txt and runtime.txt are its subsets (constrained by it).
# $(call LOCK_COMPILE,OUTPUT,OPTIONS,WHO INSTALLS IT): the last goes into the file's header.
LOCK_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	$(if $(UPGRADE),--upgrade) --custom-compile-command 'make lock  (installed by $(3))' \
	pyproject.toml requirements/tools.in $(2) --output-file $(1)
lock: $(VENV)/.uv-$(UV_VERSION)
	$(call LOCK_COMPILE,requirements/dev.txt,--extra dev,make test)
	$(call LOCK_COMPILE,requirements/demo.txt,--extra demo -c requirements/dev.txt,make demo)
	$(call LOCK_COMPILE,requirements/runtime.txt,-c requirements/dev.txt,the Containerfile)

$(VENV)/.uv-$(UV_VERSION): | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	touch $@

## Build the image with podman from a local Debian base and run it against real servers on
## loopback (what .ci/run calls after `make test`). Needs root; prints SKIPPED where podman
## cannot be installed. The mmdebstrap base is cached in .venv/container-cache/.
container-smoke: $(VENV)/.dev-installed
	$(BIN)/python scripts/container_smoke.py

## Replay the shared real Polymarket histories through rules/default.yaml; score the labels.
REAL ?= ../shared/data/real
replay-real: $(VENV)/.demo-installed
	$(BIN)/polymarket-kafka replay $(REAL)/*.history.json $(REAL)/*/*.history.json \
		--labels $(REAL)/labels.csv >/dev/null

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/poller_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .hypothesis
