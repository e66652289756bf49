# The two commands of the README. Both set up everything they need in .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench replay-real container-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## Run the service on its embedded default: local broker, recorded Polymarket data.
demo: $(VENV)/.demo-installed
	$(BIN)/polymarket-kafka demo

## Lint, type-check and run the whole test suite with coverage (what CI runs).
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy polymarket_kafka
	$(BIN)/hadolint Containerfile
	$(BIN)/python -m pytest --cov --cov-report=term-missing

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
