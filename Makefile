# dynapose4d — `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1
export OMP_WAIT_POLICY ?= PASSIVE  # no OpenMP spin-waiting on shared CPUs (see dynapose4d/__init__.py)
export PIP_RETRIES ?= 10  # a flaky network: pip retries connections and resumes interrupted downloads (a 68 MB
export PIP_RESUME_RETRIES ?= 20  # wheel cut off six times failed a fresh setup)

.PHONY: help setup demo test test-slow test-full-size test-gpu bench bench-gpu lint format train-cape clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0  # CPU build from local disk; must come first
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv: torch 2.13.0 (CPU) first, then the package with its dev extra

demo: setup ## the whole pipeline on the built-in example scene (configs/cpu.yaml), then its metrics table
	$(BIN)/dynapose4d make-scene humanoid --out runs/demo/scene --seed 0 --orbit-video
	$(BIN)/dynapose4d run runs/demo/scene --out runs/demo/run --config configs/cpu.yaml --resume
	$(BIN)/dynapose4d eval runs/demo/run --gt runs/demo/scene/gt

test: setup ## unit + smoke tests on CPU (< 10 min; excludes slow and gpu)
	$(BIN)/python -m pytest -q -m "not slow and not gpu" --timeout 600

test-slow: setup ## the slow tests (quality floors on longer runs)
	$(BIN)/python -m pytest -q -m "slow and not gpu" --ignore tests/test_full_size.py

test-full-size: setup ## Zero-1-to-3 XL, SVD and PoseAnything at full size (random weights, cached in ~/.cache/dynapose4d/full_size, ~18 GB) through configs/default.yaml on the CPU: time and peak memory per stage
	$(BIN)/python -m pytest -q -m slow tests/test_full_size.py -s

test-gpu: setup ## the gpu-marked tests (need CUDA)
	$(BIN)/python -m pytest -q -m gpu

bench: setup ## rasterizer benchmark: prints a table, writes bench/results.json
	$(BIN)/python -m dynapose4d.bench

bench-gpu: setup ## the same on CUDA (gsplat, the torch tiles, the dense reference): bench/results_cuda.json
	$(BIN)/python -m dynapose4d.bench --device cuda --out bench/results_cuda.json

lint: setup ## ruff
	$(BIN)/ruff check dynapose4d tests

format: setup ## ruff format + import sort
	$(BIN)/ruff check --fix --select I dynapose4d tests

CAPE_CONFIG ?= configs/cape/cpu.yaml
# the second phase, warm-started from the first (CAPE_MORE= for one phase only)
CAPE_MORE ?= configs/cape/cpu_more.yaml
CAPE_OUT := dynapose4d/assets/cape_small.ckpt
train-cape: setup ## reproduce the shipped CAPE checkpoint (dynapose4d/assets/cape_small.ckpt; two 50-min phases on CPU); CAPE_CONFIG=configs/cape/gpu.yaml CAPE_MORE= for the larger GPU model
	if [ -n "$(CAPE_MORE)" ]; then \
	  mkdir -p runs && \
	  $(BIN)/dynapose4d train-cape --out runs/cape_phase1.ckpt --config $(CAPE_CONFIG) && \
	  $(BIN)/dynapose4d train-cape --out $(CAPE_OUT) --config $(CAPE_MORE) --set init=runs/cape_phase1.ckpt; \
	else \
	  $(BIN)/dynapose4d train-cape --out $(CAPE_OUT) --config $(CAPE_CONFIG); \
	fi

clean: ## remove runs, caches and the virtual environment
	rm -rf runs .pytest_cache .ruff_cache $(VENV) build *.egg-info
