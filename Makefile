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

# Development mode: an ephemeral token secret, and the demo page's address with a token printed at start.
run: $(VENV)/.service
	$(BIN)/media-service --dev

# System tools the tests drive for real: helm, kubectl, prometheus, alertmanager, chromium, redis,
# haproxy; and the Kubernetes control plane, built from Go modules once per machine (cached by
# version outside the clone). Without Go the k8s tests skip on a developer's machine and fail in CI.
tools:
	bash .ci/install-tools
	bash .ci/install-k8s >/dev/null || echo "make tools: the Kubernetes binaries were not built (needs Go >= 1.26)" >&2

# The gates every change passes before the suite runs: lint, format, types and import layers.
PY_SOURCES := common service operator tests bench
lint: $(VENV)/.dev
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy common service operator
	$(BIN)/lint-imports

test: $(VENV)/.dev tools lint
	PATH="$(TOOLS):$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -W error $(PYTEST_ARGS)

bench: $(VENV)/.dev
	$(BIN)/python bench/run_all.py

# The chart's two images, tagged with its appVersion, which is the tag the chart pulls by default.
# Nothing is published under the default registry: push to yours and point the chart at it.
REGISTRY       ?= ghcr.io/media-service
TAG            ?= $(shell sed -n 's/^appVersion:[[:space:]]*//p' charts/media-service/Chart.yaml | tr -d '"')
CONTAINER_TOOL ?= $(firstword $(foreach tool,docker podman,$(if $(shell command -v $(tool) 2>/dev/null),$(tool))))
SERVICE_IMAGE   = $(REGISTRY)/media-service:$(TAG)
OPERATOR_IMAGE  = $(REGISTRY)/media-operator:$(TAG)

.PHONY: images push-images
images:
	$(if $(CONTAINER_TOOL),,$(error neither docker nor podman is on PATH; install one or set CONTAINER_TOOL))
	$(CONTAINER_TOOL) build -f service/Dockerfile -t $(SERVICE_IMAGE) .
	$(CONTAINER_TOOL) build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .

push-images: images
	$(CONTAINER_TOOL) push $(SERVICE_IMAGE)
	$(CONTAINER_TOOL) push $(OPERATOR_IMAGE)

clean:
	rm -rf $(VENV) .tools build *.egg-info .mypy_cache .ruff_cache
