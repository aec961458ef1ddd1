# headrace — two commands: `make demo` and `make test`. Each sets up what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
TORCH := torch==2.13.0

.PHONY: setup test lint typecheck pytest demo bench clean

AZURITE := node_modules/.bin/azurite-blob

setup: $(STAMP) $(AZURITE)

# torch first, pinned: it is the CPU build already on these machines; unpinned, pip pulls GBs of CUDA.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# Azurite, the Azure Blob emulator the remote tests start (version pinned in package-lock.json: 3.35 is the
# last for Node 20). Installed once, when missing; without npm the Azure tests skip (and fail in CI).
$(AZURITE):
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: tests/test_remote.py will skip Azure (install Node.js 20 and npm)"; fi

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -n 2 -p no:cacheprovider

test: lint typecheck pytest

demo: setup
	$(VENV)/bin/headrace train --out .demo/train

# MosaicML streaming is installed without its dependencies: its pins would downgrade numpy and
# transformers and pull a CUDA torch. These are the packages it imports at run time.
bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m pip install -q --no-deps mosaicml-streaming==0.13.0 zstd python-snappy Brotli catalogue
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_tokens.py
	$(PY) benchmarks/bench_order.py
	$(PY) benchmarks/bench_remote.py
	$(PY) benchmarks/bench_loader.py

clean:
	rm -rf $(VENV) .demo .bench build src/*.egg-info
