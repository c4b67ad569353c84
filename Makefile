# make demo: venv + install + the whole pipeline on a synthetic dataset.  make test: venv + install + tests.
# Both install the tested environment: every package at its exact version in requirements-dev.lock (CPU torch).
# make install LATEST=1: the newest releases pyproject.toml admits instead (what `make lock` would pin next).
# make lock-check: those newest releases in a throwaway venv, the fast tests against them, and what moved.
# make lock: recompile requirements.lock and requirements-dev.lock from pyproject.toml (needs uv: pip install uv).
PYTHON ?= python3
VENV ?= .venv
# CPU build on machines without a GPU; set TORCH_SPEC="torch" (and a CUDA index) on GPU machines.
TORCH_SPEC ?= torch==2.13.0
# Where the locked torch==2.13.0+cpu comes from when pip's own sources (PyPI, find-links) lack it: PyPI has only
# the CUDA build.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell grep -o '^torch==[^ ]*' requirements-dev.lock)
# How `make lock` finds torch 2.13.0+cpu; on a machine with a local wheel: LOCK_TORCH_SOURCE="--find-links DIR".
LOCK_TORCH_SOURCE ?= --extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match
# The platform the locks are for: the images' (Linux x86_64, CPython 3.11).
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --index-url https://pypi.org/simple
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed$(if $(filter 1,$(LATEST)),-latest,-locked)

.PHONY: install browser demo test test-fast lint bench clean lock lock-check

install: $(STAMP)

# The newest releases pyproject.toml admits (torch per TORCH_SPEC): not what the tests ran against.
$(VENV)/.installed-latest: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .[dev]
	touch $@

# Chromium from Debian's packages for tests/test_serve_page.py (playwright drives it; no browser download).
# Where it cannot be installed the target only says so, and that test skips with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q chromium; } || echo "chromium could not be installed: tests/test_serve_page.py will skip"

# Every package at its locked version, then the project itself without letting pip resolve anything else.
# The locked torch first: from pip's own sources where they hold it, else from TORCH_INDEX (only torch comes from
# there, so an unreachable TORCH_INDEX never slows the other 160 packages).
$(VENV)/.installed-locked: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_PIN)" --index-url $(TORCH_INDEX)
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Recompile both locks, install the new dev lock here, and record what each pinned package requires
# (infra/lock/resolution.json, read by tests/test_lock.py instead of the installed metadata).
lock:
	$(BIN)/uv pip compile pyproject.toml -o requirements.lock $(LOCK_TARGET) $(LOCK_TORCH_SOURCE) \
	  --override infra/lock/torch-cpu.txt --no-header --annotation-style line
	$(BIN)/uv pip compile pyproject.toml --extra dev -o requirements-dev.lock $(LOCK_TARGET) $(LOCK_TORCH_SOURCE) \
	  --override infra/lock/torch-cpu.txt --constraint requirements.lock --no-header --annotation-style line
	$(BIN)/pip install -q -r requirements-dev.lock && $(BIN)/pip install -q --no-deps -e .
	$(BIN)/python infra/lock/record_resolution.py

# Do the newest releases still work? A throwaway venv with them, the fast tests run against it, then which packages
# moved from their pins. Never part of `make test`; the project venv is left alone.
LOCK_CHECK_VENV ?= $(or $(TMPDIR),/tmp)/lma3d-lock-check
lock-check:
	rm -rf $(LOCK_CHECK_VENV) && $(PYTHON) -m venv $(LOCK_CHECK_VENV)
	$(LOCK_CHECK_VENV)/bin/pip install -q --upgrade pip
	$(LOCK_CHECK_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(LOCK_CHECK_VENV)/bin/pip install -q -e .[dev]
	$(LOCK_CHECK_VENV)/bin/pip freeze --exclude-editable > $(LOCK_CHECK_VENV)/freeze.txt
	$(LOCK_CHECK_VENV)/bin/python infra/lock/moved.py requirements-dev.lock $(LOCK_CHECK_VENV)/freeze.txt
	$(LOCK_CHECK_VENV)/bin/python -m pytest -m "not slow" -q

demo: install
	$(BIN)/lma3d demo

# Two test processes (pytest-xdist): a test's Ray, DeepSpeed and MLflow start-ups leave a third of 2 cores idle.
# --dist loadgroup: tests marked with one xdist_group run in one process (they share a module fixture's run, or
# must not overlap); the rest go to whichever process is free.
test: install browser
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test-fast: install
	$(BIN)/python -m pytest -n 2 -m "not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) work
