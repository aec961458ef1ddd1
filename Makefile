# headrace — two commands: `make demo` and `make test`. Each sets up what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
TORCH := torch==2.13.0
BENCH_VENV := .venv-bench
DEMO_VENV := .venv-demo

# The peers of the benchmark suite that cannot be installed with their dependencies: MosaicML streaming pins old
# numpy/transformers and a CUDA torch, litdata wants torchvision (only CUDA wheels here). Installed without them;
# what they import at run time is in the `bench` extra. The test environment has them too: a test runs the suite.
PEERS := mosaicml-streaming==0.13.0 litdata==0.2.76
define install_peers
	$(1) -m pip install -q --no-deps $(PEERS)
endef

.PHONY: setup setup-demo test lint typecheck pytest demo bench bench-quick clean

AZURITE := node_modules/.bin/azurite-blob

setup: $(STAMP) $(AZURITE)

# torch first, pinned: it is the CPU build already on these machines; unpinned, pip pulls GBs of CUDA.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	$(call install_peers,$(PY))
	touch $(STAMP)

# Azurite, the Azure Blob emulator the remote tests start (version pinned in package-lock.json: 3.35 is the
# last for Node 20). Installed once, when missing; without npm the Azure tests skip (and fail in CI).
$(AZURITE):
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: tests/test_remote.py will skip Azure (install Node.js 20 and npm)"; fi

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples corpora
	$(VENV)/bin/ruff format --check src tests benchmarks examples corpora

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -n 2 -p no:cacheprovider

test: lint typecheck pytest

# The demo in its own small environment (.venv-demo): the package with the `train` extra (torch, tokenizers, rich)
# and the CPU torch, nothing of the test environment (Ray, JAX, Flax, the peers).
demo: setup-demo
	$(DEMO_VENV)/bin/headrace train --out .demo/train --overwrite

setup-demo: $(DEMO_VENV)/.setup-stamp

$(DEMO_VENV)/.setup-stamp: pyproject.toml Makefile
	test -x $(DEMO_VENV)/bin/python || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q $(TORCH)
	$(DEMO_VENV)/bin/python -m pip install -q -e ".[train]"
	touch $@

# The benchmark suite, in its own environment (.venv-bench): every comparison with the peers, then BENCHMARKS.md.
# `make bench-quick` runs it small (minutes); one workload: .venv-bench/bin/python -m benchmarks text --quick
bench: $(BENCH_VENV)/.setup-stamp
	$(BENCH_VENV)/bin/python -m benchmarks

bench-quick: $(BENCH_VENV)/.setup-stamp
	$(BENCH_VENV)/bin/python -m benchmarks --quick

$(BENCH_VENV)/.setup-stamp: pyproject.toml Makefile
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q $(TORCH)
	$(BENCH_VENV)/bin/python -m pip install -q -e ".[test,bench]"
	$(call install_peers,$(BENCH_VENV)/bin/python)
	touch $@

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(DEMO_VENV) .demo .bench .corpora build src/*.egg-info
