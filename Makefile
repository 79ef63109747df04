# The habits of the repo. `make test` and `make demo` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The browser test drives Debian's Chromium (Playwright's own browser download cannot work offline).
CHROMIUM := /usr/bin/chromium

.PHONY: install tools lint typecheck test unit bench chaos demo clean

$(STAMP): requirements-dev.txt layers/deps/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# AWS's own offline judges of template.yaml, in virtualenvs of their own: aws-sam-cli pins its own boto3,
# and checkov pins another one (tools/requirements*.txt).
TOOLS_VENV := .tools-venv
CHECKOV_VENV := .checkov-venv
TOOLS_STAMP := $(TOOLS_VENV)/.installed
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

$(TOOLS_STAMP): tools/requirements.txt
	rm -rf $(TOOLS_VENV)
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/pip install --quiet -r tools/requirements.txt
	touch $@

$(CHECKOV_STAMP): tools/requirements-checkov.txt
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r tools/requirements-checkov.txt
	touch $@

tools: $(TOOLS_STAMP) $(CHECKOV_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy layers/common/kling_pipeline devstack functions

$(CHROMIUM):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

test: lint typecheck $(CHROMIUM) tools
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

bench: $(STAMP)
	$(BIN)/python -m bench

# The fault drill: 1,000 jobs through the real handlers with every fault at once; a table, and exit 0 only when
# every must holds (tests/integration/chaos.py; the suite runs it small).
# Quiet handlers: Powertools reads its level when the handlers are imported, before the drill starts.
chaos: $(STAMP)
	POWERTOOLS_LOG_LEVEL=WARNING POWERTOOLS_METRICS_DISABLED=true $(BIN)/python -m tests.integration.chaos --jobs 1000

# The whole pipeline on one machine: local stack up, one job through SQS and one through an upload,
# images and gallery.html in ./out/, a summary, stack down (no process left behind).
demo: $(STAMP)
	$(BIN)/python -m devstack.cli.demo --out out

clean:
	rm -rf $(VENV) $(TOOLS_VENV) $(CHECKOV_VENV) .aws-sam .mypy_cache .pytest_cache .ruff_cache out .devstack
