# overnight: the commands a user types. Python tools run from a virtualenv made on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The one torch of the project: images/requirements.txt pins it for the images and the host alike.
TORCH_SPEC ?= $(shell sed -n 's/^\(torch==[^ #;]*\).*/\1/p' images/requirements.txt)
PROFILE ?= cpu
DATASET ?=
DATA_DIR ?= data/$(PROFILE)
TRAIN ?= programs/default/train.py
PYTEST_ARGS ?=
# docker (the local engine) or kubernetes (Jobs on a cluster, docs/kubernetes.md); empty: the
# controller's own setting (OVERNIGHT_BACKEND, default docker).
BACKEND ?= $(OVERNIGHT_BACKEND)
ON_CLUSTER = $(filter kubernetes,$(BACKEND))

.PHONY: help setup setup-host doctor test unit lint prepare prepare-bare experiment experiment-bare bench-sandbox bench-gpu bench-throughput bench-null-keeps bench-preflight images overnight replay verify logs status report cleanup

help:
	@echo "make overnight              run the research loop (cpu or gpu profile, search or anthropic agent)"
	@echo "make status [TAG=..]        the night's progress: each slot's experiment, what is in flight"
	@echo "make report [TAG=..]        the morning report of a night (table, plot, kept diffs)"
	@echo "make logs RUN=<n|commit>    one run's container logs"
	@echo "make replay SHA=<commit>    run one experiment again and compare its val_bpb with the recorded one"
	@echo "make verify TAG=<tag>       the improvement +/- its standard error: the baseline and the best re-run RUNS=3 times each"
	@echo "make cleanup [TAG=..]       remove every container and volume a night (or the sandbox) left"
	@echo "make doctor                 check everything a night depends on: ok, warning or missing, and the fix"
	@echo "make setup-host             install and start what a night needs (Docker engine, compose, debootstrap)"
	@echo "make setup                  the development virtualenv .venv (torch CPU, test tools)"
	@echo "make images                 build the base, runtime, evaluator and prepare images"
	@echo "make prepare [PROFILE=cpu]  prepare the data directory data/\$$PROFILE (BACKEND=kubernetes: on the cluster's data volume)"
	@echo "make prepare-bare           prepare data/\$$PROFILE on the host (development)"
	@echo "make experiment             train + score one train.py in the two containers"
	@echo "make experiment-bare        train + score one train.py as plain processes (development)"
	@echo "make test                   the full test suite, end-to-end Docker tests included (builds the images first)"
	@echo "make unit                   every test that needs no Docker engine (pytest -m 'not docker and not slow')"
	@echo "make lint                   ruff (lint and format check) and mypy over controller, sandbox, evaluator"
	@echo "make bench-sandbox          containers against bare processes: wall time of one experiment"
	@echo "make bench-gpu              where an experiment's time goes outside training, on this machine's GPU"
	@echo "make bench-preflight        how long the checks before a night take"
	@echo "make bench-throughput       slots kept busy: nights of fixed length, sequential against overlapping"
	@echo "make bench-null-keeps       keeps you can trust: no-op proposals, how many were falsely kept"
	@echo "make help                   this list"

# --- environment -----------------------------------------------------------------------------

$(VENV)/.host: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# torch on the host is only for development and tests (the bare runner); the loop does not need it.
$(VENV)/.dev: $(VENV)/.host pyproject.toml
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[train,dev]"
	touch $@

setup: $(VENV)/.dev

# The Docker engine, compose, debootstrap: installed and started when missing (says what it runs),
# nothing at all when the machine is ready. `make test` needs no GPU, so no NVIDIA runtime check.
SETUP_HOST_ARGS = $(if $(call given,PROFILE),--profile $(PROFILE))
test: SETUP_HOST_ARGS = --profile cpu
setup-host:
	@VENV=$(VENV) scripts/setup-host $(SETUP_HOST_ARGS)

# Everything a night depends on, as a table; exits non-zero when a night could not start.
doctor: $(VENV)/.host
	@$(PY) -m controller doctor $(if $(call given,PROFILE),--profile $(PROFILE)) $(if $(AGENT),--agent $(AGENT))

# --- images and data -------------------------------------------------------------------------
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

# Local base (debootstrap + host wheelhouse) with no registry, or BASE_IMAGE=<Debian/Ubuntu image>;
# the pinned torch either way (KEEP_BASE_TORCH=1 keeps a PyTorch base's own). Ends with a smoke test.
images: setup-host $(VENV)/.host
	$(PY) images/build.py $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(KEEP_BASE_TORCH),--keep-base-torch)

# The one-off compose job (the only container with a network) writes data/$(PROFILE); with
# BACKEND=kubernetes a prepare Job writes <data volume>/$(PROFILE) on the cluster instead.
# DATASET= or VAL= as parquet:<folder>/<pattern> on this machine: the folder is mounted read-only
# into the job (at /in/dataset, /in/val) and the job reads the same pattern there.
parquet_dir = $(abspath $(dir $(patsubst parquet:%,%,$(1))))
parquet_in = $(if $(filter parquet:%,$(1)),parquet:/in/$(2)/$(notdir $(patsubst parquet:%,%,$(1))),$(1))
parquet_mount = $(if $(filter parquet:%,$(1)),-v "$(call parquet_dir,$(1)):/in/$(2):ro")
parquet_bad = $(or $(findstring *,$(1)),$(findstring ?,$(1)),$(findstring [,$(1)),$(if $(wildcard $(1)/.),,missing))
parquet_check = $(if $(filter parquet:%,$(1)),$(if $(call parquet_bad,$(call parquet_dir,$(1))),$(error make prepare: \
  $(call parquet_dir,$(1)) is not a folder here ($(2)=parquet:<folder>/<pattern>, a folder without wildcards))))
ifneq ($(filter prepare,$(MAKECMDGOALS)),)
ifeq ($(ON_CLUSTER),)
  $(call parquet_check,$(DATASET),DATASET)
  $(call parquet_check,$(VAL),VAL)
endif
endif
prepare: $(if $(ON_CLUSTER),$(VENV)/.host,images)
ifneq ($(ON_CLUSTER),)
	@test -z "$(VAL)" || { echo "make prepare: VAL= is not supported with BACKEND=kubernetes yet"; exit 2; }
	$(PY) -m sandbox.kubernetes.prepare --profile $(PROFILE) $(if $(DATASET),--dataset $(DATASET))
else
	mkdir -p data
	OVERNIGHT_UID=$$(id -u) OVERNIGHT_GID=$$(id -g) $(COMPOSE) -p overnight \
	  $(strip run --rm $(call parquet_mount,$(DATASET),dataset) $(call parquet_mount,$(VAL),val) prepare) \
	  $(strip --profile $(PROFILE) $(if $(DATASET),--dataset '$(call parquet_in,$(DATASET),dataset)') \
	  $(if $(VAL),--val '$(call parquet_in,$(VAL),val)') --out /data/$(PROFILE))
endif

# Prepare on the host (development): the host Python's stdlib test suite is the validation text.
prepare-bare: $(VENV)/.dev
	$(PY) -m evaluator.prepare --profile $(PROFILE) $(if $(DATASET),--dataset $(DATASET)) $(if $(VAL),--val $(VAL)) --out $(DATA_DIR)

# --- one experiment --------------------------------------------------------------------------

experiment: $(VENV)/.host
	@$(PY) -m sandbox.experiment --preflight --profile $(PROFILE)
	@$(MAKE) --no-print-directory images
	@test -f $(DATA_DIR)/manifest.json || $(MAKE) --no-print-directory prepare
	$(PY) -m sandbox.experiment --train $(TRAIN) --profile $(PROFILE) --data-dir $(DATA_DIR)

bench-sandbox: $(VENV)/.dev images
	$(PY) benchmarks/bench_sandbox.py --profile $(PROFILE) --data-dir $(DATA_DIR)

# The CPU preflight of the seed (issue 13), in its container on $(PROFILE): prints preflight_<profile>_s
# and preflight_share_max (its seconds / the profile's train budget). ARGS: --cases (broken proposals too).
.PHONY: bench-preflight
bench-preflight: $(VENV)/.dev images
	@test -f $(DATA_DIR)/manifest.json || $(MAKE) --no-print-directory prepare
	$(PY) benchmarks/bench_preflight.py --profile $(PROFILE) --data-dir $(DATA_DIR) $(ARGS)

# Where an experiment's time goes outside training, on this machine's GPU (a tiny CPU version
# without one): in containers when the engine and images are there, else as plain processes. Needs
# only PyTorch (the project's venv when there is one, else $(PYTHON)); nothing is downloaded.
bench-gpu:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/bench_gpu.py $(if $(call given,PROFILE),--profile $(PROFILE)) $(ARGS)

# Slots kept busy (issue 13): three nights of fixed length on $(PROFILE), 1 core per slot; prints
# busy_sequential, busy_overlap, speedup_2_slots. ARGS: --minutes 10 --think-s 20.
bench-throughput: $(VENV)/.dev images
	@test -f $(DATA_DIR)/manifest.json || $(MAKE) --no-print-directory prepare
	$(PY) benchmarks/bench_throughput.py --profile $(PROFILE) --data-dir $(DATA_DIR) $(ARGS)

# Keeps you can trust (issue 12): >= 20 no-op proposals on $(PROFILE); prints false_keep_old,
# false_keep_new, extra_runs. ARGS: --proposals 20 --slots 2 --improvement.
bench-null-keeps: $(VENV)/.dev images
	@test -f $(DATA_DIR)/manifest.json || $(MAKE) --no-print-directory prepare
	$(PY) benchmarks/bench_null_keeps.py --profile $(PROFILE) --data-dir $(DATA_DIR) $(ARGS)

experiment-bare: $(VENV)/.dev
	@$(PY) -m sandbox.bare --preflight --profile $(PROFILE)
	@test -f $(DATA_DIR)/manifest.json || $(MAKE) --no-print-directory prepare-bare
	$(PY) -m sandbox.bare --train $(TRAIN) --profile $(PROFILE) --data-dir $(DATA_DIR)

# --- tests -----------------------------------------------------------------------------------

test: setup-host $(VENV)/.dev images
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Every test that needs no Docker engine (the docker marker is set in tests/conftest.py for any
# test that uses the engine's fixtures): no images, no engine, a few minutes at most.
unit: $(VENV)/.dev
	$(PY) -m pytest -q -n auto -m "not docker and not slow" $(PYTEST_ARGS)

# ruff (lint and format check) and mypy, configured in pyproject.toml.
LINT_PATHS = controller sandbox evaluator tests benchmarks
lint: $(VENV)/.dev
	$(PY) -m ruff check $(LINT_PATHS) && $(PY) -m ruff format --check $(LINT_PATHS) && \
	  $(PY) -m mypy controller sandbox evaluator

# --- the research loop -----------------------------------------------------------------------
# PROFILE is passed on only when the user gave it: otherwise the controller picks gpu or cpu.
given = $(filter command line environment override,$(origin $(1)))

# On a cluster the data lies on its volume (checked there by the controller at the start).
overnight: setup-host $(VENV)/.host images
ifeq ($(ON_CLUSTER),)
	@p=$(if $(call given,PROFILE),$(PROFILE),$$($(PY) -m controller profile)); \
	  test -f data/$$p/manifest.json || $(MAKE) --no-print-directory prepare PROFILE=$$p
endif
	$(PY) -m controller overnight $(if $(BACKEND),--backend $(BACKEND)) $(if $(TAG),--tag $(TAG)) \
	  $(if $(call given,PROFILE),--profile $(PROFILE)) \
	  $(if $(AGENT),--agent $(AGENT)) $(if $(HOURS),--hours $(HOURS)) $(if $(UNTIL),--until $(UNTIL)) \
	  $(if $(MAX_EXPERIMENTS),--max-experiments $(MAX_EXPERIMENTS)) $(ARGS)

replay: $(VENV)/.host
	@test -n "$(SHA)" || { echo "usage: make replay SHA=<commit>"; exit 2; }
	$(PY) -m controller replay $(SHA) $(if $(BACKEND),--backend $(BACKEND)) $(ARGS)

# The morning's error bars: the tag's baseline and final best, RUNS fresh-seeded runs each (recorded
# as replays, so later nights pool them), then the improvement as mean +/- spread.
verify: $(VENV)/.host
	@test -n "$(TAG)" || { echo "usage: make verify TAG=<tag> [RUNS=3]"; exit 2; }
	$(PY) -m controller verify --tag $(TAG) $(if $(RUNS),--runs $(RUNS)) $(if $(BACKEND),--backend $(BACKEND)) $(ARGS)

logs: $(VENV)/.host
	@test -n "$(RUN)" || { echo "usage: make logs RUN=<number or commit> [TAG=..]"; exit 2; }
	$(PY) -m controller logs $(RUN) $(if $(TAG),--tag $(TAG)) $(ARGS)

status: $(VENV)/.host
	$(PY) -m controller status $(if $(TAG),--tag $(TAG))

report: $(VENV)/.host
	$(PY) -m controller report $(if $(TAG),--tag $(TAG))

cleanup: $(VENV)/.host
	$(PY) -m controller cleanup $(if $(TAG),--tag $(TAG))
