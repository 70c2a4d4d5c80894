# One entry point for set-up, tests, the demo and the benchmark. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first of these that is Python >= 3.11 (pyproject's requires-python); `make PYTHON=...` picks another.
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3
ifndef PYTHON
PYTHON := $(firstword $(foreach candidate,$(PYTHON_CANDIDATES),\
	$(shell $(candidate) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo $(candidate))))
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TF_IN_AUTOMATION := 1
export CHECKPOINT_DISABLE := 1

# Terraform takes its providers from an offline filesystem mirror when this machine has one
# (TF_PLUGIN_DIR, default /opt/tf-plugins): scripts/tf_mirror.py writes the CLI config that names it and
# prints its path, and every terraform below (tests, demo, pre-commit) reads it via TF_CLI_CONFIG_FILE.
# Without a mirror it prints nothing, and terraform init uses the registry.
TF_MIRROR_CONFIG := $(if $(PYTHON),$(shell $(PYTHON) scripts/tf_mirror.py .tmp/terraform-mirror.tfrc))
ifneq ($(TF_MIRROR_CONFIG),)
export TF_CLI_CONFIG_FILE := $(TF_MIRROR_CONFIG)
endif

QUICK ?=
PYTEST_ARGS ?=
# pytest processes for `make test` (pytest-xdist): most tests wait on workers, brokers and terraform,
# not on the CPU, so three share two cores well. TEST_PROCESSES=0 runs everything in this one process.
TEST_PROCESSES ?= 3

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "no Python >= 3.11 among $(PYTHON_CANDIDATES); install one or set PYTHON=" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

.PHONY: venv
venv: $(STAMP) ## Create the virtualenv and install everything

.PHONY: services
services: ## Install redis-server and rabbitmq-server (apt) if missing; tests and demo start private ones
	@scripts/install-brokers.sh

.PHONY: localstack-venv
localstack-venv: ## LocalStack's own venv (Python >= 3.13) for the LocalStack tests (they also build it)
	@scripts/localstack-venv.sh

.PHONY: lint
lint: venv ## ruff and mypy (strict on the package)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: test
test: venv services lint ## Everything CI runs: lint, types, pytest (private Redis and RabbitMQ, Celery, terraform, moto)
	$(VENV)/bin/pytest -q -ra -n $(TEST_PROCESSES) --dist loadscope $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ## The fast tier (pytest -m unit): policy, config, simulator, estimators; no Redis, no terraform
	$(VENV)/bin/pytest -q -ra -m unit $(PYTEST_ARGS)

BROKER ?= redis

.PHONY: demo
demo: venv ## The scaler against local Redis (BROKER=rabbitmq: RabbitMQ) and moto (QUICK=1 for the short run)
	@scripts/install-brokers.sh redis-server $(if $(filter rabbitmq,$(BROKER)),rabbitmq-server,)
	PYTHONPATH=examples/local $(PY) -m demo.main --broker $(BROKER) $(if $(QUICK),--quick,)

.PHONY: calibrate
calibrate: venv ## The simulator against a real demo run of one trace (about 10 min) -> calibrate-out/; exit 1 if off by > 20 %
	@scripts/install-brokers.sh redis-server
	PYTHONPATH=examples/local $(PY) scripts/calibrate.py --out calibrate-out

.PHONY: bench
bench: venv services ## Simulated benchmark of every policy on every built-in trace -> bench-out/ (+ probe timings)
	$(PY) scripts/bench.py --out bench-out

.PHONY: fmt
fmt: venv ## Format Python and Terraform
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	terraform fmt -recursive

.PHONY: lambda-zip
lambda-zip: ## Rebuild the committed, reproducible Lambda zip (lambda/dist); commit the result
	$(PYTHON) lambda/build_zip.py

# checkov pins many packages of its own, so it lives in its own virtualenv.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
CHECKOV_OUTPUT ?= cli

$(CHECKOV_STAMP):
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	@rm -f $(CHECKOV_VENV)/.installed-* && touch $@

.PHONY: checkov
checkov: $(CHECKOV_STAMP) ## checkov on the module and its examples (skips only inline, with a reason)
	$(CHECKOV_VENV)/bin/checkov -d . --framework terraform --quiet --compact --skip-download \
		--skip-path '(^|/)\.terraform/' --skip-path '(^|/)\.tmp/' --skip-path '(^|/)\.venv' -o $(CHECKOV_OUTPUT)

.PHONY: docs
docs: ## Regenerate README.md's inputs/outputs tables from the .tf files
	$(PYTHON) scripts/tf_docs.py
