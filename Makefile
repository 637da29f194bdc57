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

.PHONY: demo test lint format report report-quick venv36 report36 gpu-check bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test,cli,plot,dev,vision]" "$(TORCH)"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/cnnkernels demo

test: $(VENV)/.installed lint
	$(PY) -m pytest -q -m "not slow" tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

report: $(VENV)/.installed
	$(VENV)/bin/cnnkernels report

report-quick: $(VENV)/.installed
	$(PY) -m cnnkernels.report --quick

# The GPU machine runs Triton 3.6; this side venv (CPU torch, triton 3.6.0, this checkout
# installed editable, inside .venv so it stays untracked) compiles the same static sm_90 report
# with that version. `make report36` runs it; tests/test_static_sm90.py uses it when it exists.
VENV36 ?= $(VENV)/triton36
TRITON36 ?= triton==3.6.0

$(VENV36)/.installed: pyproject.toml
	python3 -m venv $(VENV36)
	$(VENV36)/bin/pip install -q "torch==2.13.0" "$(TRITON36)" numpy
	$(VENV36)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv36: $(VENV36)/.installed

report36: $(VENV36)/.installed
	$(VENV36)/bin/python -m cnnkernels.report

bench: $(VENV)/.installed
	$(PY) -m pytest benchmarks --benchmark-only

# On a GPU machine with torch and triton preinstalled and no network.
gpu-check:
	python3 -m pip install -q -e . --no-deps --no-build-isolation
	python3 benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks
