# Two commands on a fresh machine: `make run` starts the service, `make test` passes the suite.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
TOOLS  := $(CURDIR)/.tools/bin

.PHONY: run test tools bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# One stamp per extra, so `make run` installs only what the service needs.
$(VENV)/.service: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[service]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.service

run: $(VENV)/.service
	$(BIN)/media-service

# System tools the tests drive for real: helm, prometheus, alertmanager, chromium.
tools:
	bash .ci/install-tools

test: $(VENV)/.dev tools
	PATH="$(TOOLS):$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -W error $(PYTEST_ARGS)

bench: $(VENV)/.dev
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .tools build *.egg-info
