# Two entry points for a fresh machine: `make demo` and `make test`. Each builds what it needs.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint venv prometheus bench compiled

# The exact versions of uv.lock (`uv lock` after editing pyproject.toml's ranges); uv is installed into
# the venv first. --inexact keeps pip and uv themselves, which the lock does not list.
$(BIN)/.installed: pyproject.toml uv.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv
	UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv sync -q --locked --inexact --extra dev --python $(BIN)/python
	touch $@

venv: $(BIN)/.installed

# The tests start Debian's Prometheus themselves; it only has to be installed.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  ( $(SUDO) apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends prometheus )

# The live loop on this machine (~4 min): Prometheus, local workers, the flash-crowd trace compressed.
demo: venv prometheus
	$(BIN)/gpuburst demo --plot demo.png

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: venv prometheus lint
	$(BIN)/pytest

# The replay's hot path compiled with mypyc into a copy (controller/sim/compiled.py): the benchmark and
# long evaluations run from it (`PYTHONPATH=build/compiled gpuburst ...`); the source tree stays Python.
COMPILED := build/compiled
$(COMPILED)/.built: $(BIN)/.installed $(shell find controller -name '*.py')
	$(BIN)/python -m controller.sim.compiled $(COMPILED)
	touch $@

compiled: $(COMPILED)/.built

bench: compiled
	PYTHONPATH=$(COMPILED) $(BIN)/gpuburst bench-sim --scenario worldcup98
