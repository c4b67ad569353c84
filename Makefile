# make demo: venv + install + the whole pipeline on a synthetic dataset.  make test: venv + install + tests.
PYTHON ?= python3
VENV ?= .venv
# CPU build on machines without a GPU; set TORCH_SPEC="torch" (and a CUDA index) on GPU machines.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install browser demo test lint bench clean

install: $(VENV)/.installed

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
