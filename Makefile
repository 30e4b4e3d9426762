# The two commands of the README: `make demo` and `make test`. Both bootstrap everything they
# need from the pinned lock file (uv.lock) into .venv, with only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
TOOLS := .tools
UV_VERSION := 0.13.9
UV := $(TOOLS)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy

.PHONY: install demo test test-fast lint docs up down status clean lock

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/riskloop demo

# Two workers, a test file at a time each: the suite waits on servers and subprocesses as much
# as it computes, so two overlap well on 2 cores (tests/conftest.py starts the longest files first).
PYTEST_PARALLEL ?= -n 2 --dist loadfile --no-loadscope-reorder

# The architecture's import contracts (pyproject.toml, [tool.importlinter]) and ruff.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# The reference pages in docs/reference/ (CLI, API, configuration), generated from the code.
docs: install
	$(VENV)/bin/python docs/generate_reference.py

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL)

test-fast: install
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

up: install
	$(VENV)/bin/riskloop up

down: install
	$(VENV)/bin/riskloop down

status: install
	$(VENV)/bin/riskloop status

lock: $(UV)
	$(UV) lock

clean:
	-$(VENV)/bin/riskloop down
	rm -rf .riskloop demo-summary.json
