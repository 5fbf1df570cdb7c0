# Two commands on a fresh machine: `make serve` and `make test`. Everything else is set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH := artifacts/bench
# Ray 2.60 turns token auth on by default; this one-machine cluster runs with it off
# (deployments/cluster.py starts Ray with the same value), so `ray job` commands agree.
export RAY_AUTH_MODE ?= disabled
# The venv's tools (serve, ray, handai) first, for recipes and the processes they start.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install redis browser lint test test-cluster serve stop bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# From this machine's disk; pip finds them, poetry and uv would download ~3 GB.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

redis:
	@command -v redis-server >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; }

# Debian's chromium and its driver for the page's tests (a browser download by a test tool
# fails on machines without general network access).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install redis browser lint
	$(BIN)/pytest

# Two Ray nodes on this machine (head and worker, `ray start` each): reads on both, a
# promotion, the worker node killed under load and under training (tests/test_multinode.py).
test-cluster: install redis browser
	$(BIN)/pytest -m multinode tests/test_multinode.py

# Serves the shipped model on :8081 (seed/ is copied into models/): a local Ray head, then
# serve_config.yaml; exits with the reason if it cannot start; Ctrl-C stops all of it.
serve: install
	HANDAI_COMMIT=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown) \
	  $(BIN)/python -m deployments.cluster serve

# What a killed `make serve` left running: this project's cluster only, not any other Ray.
stop: install
	$(BIN)/python -m deployments.cluster stop

# Every benchmark, then docs/benchmarks.md. Stops any running service first: it measures
# the cold start of `make serve` and leaves nothing running.
bench: install
	$(BIN)/python -m benchmarks.preprocess --out $(BENCH)/preprocess.json
	$(BIN)/python -m benchmarks.forward --out $(BENCH)/forward.json
	-$(MAKE) --no-print-directory stop >/dev/null 2>&1
	$(BIN)/python -m benchmarks.cold_start --out $(BENCH)/cold_start.json
	$(BIN)/python -m benchmarks.serving --out $(BENCH)/serving.json
	-$(MAKE) --no-print-directory stop >/dev/null 2>&1
	$(BIN)/python -m benchmarks.training --full-epoch --out $(BENCH)/training.json
	$(BIN)/python -m benchmarks.report $(BENCH) docs/benchmarks.md

# Hostile inputs, overload, swaps, a replica kill, a 30-minute soak and 5 stop/start cycles
# against the service as `make serve` runs it (stopped first); figures in docs/reliability.md.
# Its fast parts run in `make test` (tests/test_chaos.py).
chaos: install
	$(BIN)/python -m benchmarks.chaos --out artifacts/chaos/chaos.json --doc docs/reliability.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
