# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Both create the virtual environment when there is none.
#
# TORCH picks the torch build. On a machine without an NVIDIA GPU it defaults to the CPU build
# torch==2.13.0 (small, and found on local disk where a wheel cache has it); with a GPU, the
# newest torch. Override freely: `make test TORCH='torch==2.15.0'`.

VENV ?= .venv
PY := $(VENV)/bin/python
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH ?= $(if $(HAS_GPU),torch,torch==2.13.0)

.PHONY: demo test lint format report gpu-check bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test,cli,plot,dev]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/cnnkernels demo

test: $(VENV)/.installed lint
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

report: $(VENV)/.installed
	$(VENV)/bin/cnnkernels report

bench: $(VENV)/.installed
	$(PY) -m pytest benchmarks --benchmark-only

# On a GPU machine with torch and triton preinstalled and no network.
gpu-check:
	python3 -m pip install -q -e . --no-deps --no-build-isolation
	python3 benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks
