# headrace — two commands: `make demo` and `make test`. Each sets up what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
TORCH := torch==2.13.0

.PHONY: setup test lint typecheck pytest demo bench clean

setup: $(STAMP)

# torch first, pinned: it is the CPU build already on these machines; unpinned, pip pulls GBs of CUDA.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -n 2 -p no:cacheprovider

test: lint typecheck pytest

demo: setup
	$(PY) examples/resume_demo.py

bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) .demo .bench build src/*.egg-info
