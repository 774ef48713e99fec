# overnight: the commands a user types. Python tools run from a virtualenv made on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= cpu
DATASET ?=
DATA_DIR ?= data/$(PROFILE)
TRAIN ?= programs/default/train.py
PYTEST_ARGS ?=

.PHONY: help setup test prepare prepare-bare experiment experiment-bare images overnight replay logs status report cleanup

help:
	@echo "make overnight              run the research loop (cpu or gpu profile, search or anthropic agent)"
	@echo "make test                   the test suite (builds the images first)"
	@echo "make prepare [PROFILE=cpu]  prepare the data directory data/\$$PROFILE"
	@echo "make experiment-bare        train + score one train.py as plain processes (development)"

# --- environment -----------------------------------------------------------------------------

$(VENV)/.host: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# torch on the host is only for development and tests (the bare runner); the loop does not need it.
$(VENV)/.dev: $(VENV)/.host
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $@

setup: $(VENV)/.dev

# --- data ------------------------------------------------------------------------------------

# Prepare on the host (development): the host Python's stdlib test suite is the validation text.
prepare-bare: $(VENV)/.dev
	$(PY) -m evaluator.prepare --profile $(PROFILE) $(if $(DATASET),--dataset $(DATASET)) --out $(DATA_DIR)

# --- one experiment --------------------------------------------------------------------------

experiment-bare: $(VENV)/.dev
	@test -f $(DATA_DIR)/manifest.json || $(MAKE) --no-print-directory prepare-bare
	$(PY) -m sandbox.bare --train $(TRAIN) --profile $(PROFILE) --data-dir $(DATA_DIR)

# --- tests -----------------------------------------------------------------------------------

test: $(VENV)/.dev
	$(PY) -m pytest -q $(PYTEST_ARGS)
