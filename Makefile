# One entry point for set-up, tests, the demo and the benchmark. Every target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TF_IN_AUTOMATION := 1
export CHECKPOINT_DISABLE := 1

QUICK ?=
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
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
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

# An offline provider mirror if this machine has one (a folder holding registry.terraform.io/);
# empty means plain `terraform init` from the registry.
TF_PLUGIN_DIR ?= $(shell test -d /opt/tf-plugins/registry.terraform.io && echo /opt/tf-plugins || \
	find / -xdev -type d -name registry.terraform.io -prune 2>/dev/null | head -n1 | xargs -r dirname)

.PHONY: demo
demo: venv ## The scaler against local Redis and moto (QUICK=1 for the short run)
	@scripts/install-brokers.sh redis-server
	PYTHONPATH=examples/local TF_PLUGIN_DIR="$(TF_PLUGIN_DIR)" $(PY) -m demo.main $(if $(QUICK),--quick,)

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
