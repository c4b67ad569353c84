# make demo: venv + install + the whole pipeline on a synthetic dataset.  make test: venv + install + tests.
# make install LOCK=1: exact versions of every package from requirements-dev.lock (CPU torch), as the images use.
# make lock: recompile requirements.lock and requirements-dev.lock from pyproject.toml (needs uv: pip install uv).
PYTHON ?= python3
VENV ?= .venv
# CPU build on machines without a GPU; set TORCH_SPEC="torch" (and a CUDA index) on GPU machines.
TORCH_SPEC ?= torch==2.13.0
# Where the locked torch==2.13.0+cpu comes from (PyPI has only the CUDA build).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# How `make lock` finds torch 2.13.0+cpu; on a machine with a local wheel: LOCK_TORCH_SOURCE="--find-links DIR".
LOCK_TORCH_SOURCE ?= --extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match
# The platform the locks are for: the images' (Linux x86_64, CPython 3.11).
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed$(if $(filter 1,$(LOCK)),-locked,)

.PHONY: install browser demo test lint bench clean lock

install: $(STAMP)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Chromium from Debian's packages for tests/test_serve_page.py (playwright drives it; no browser download).
# Where it cannot be installed the target only says so, and that test skips with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q chromium; } || echo "chromium could not be installed: tests/test_serve_page.py will skip"

# Every package at its locked version, then the project itself without letting pip resolve anything else.
$(VENV)/.installed-locked: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.lock --extra-index-url $(TORCH_INDEX)
	$(BIN)/pip install -q --no-deps -e .
	touch $@

lock:
	$(BIN)/uv pip compile pyproject.toml -o requirements.lock $(LOCK_TARGET) $(LOCK_TORCH_SOURCE) \
	  --override infra/lock/torch-cpu.txt --no-header --annotation-style line
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements-dev.lock $(LOCK_TARGET) $(LOCK_TORCH_SOURCE) \
	  --override infra/lock/torch-cpu.txt --constraint requirements.lock --no-header --annotation-style line

demo: install
	$(BIN)/lma3d demo

test: install browser
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) work
