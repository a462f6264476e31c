# latent_diffusion -- every target installs what it needs first (a stamp file),
# so `make demo` and `make test` work on a fresh clone with nothing run before.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch build: a machine with an NVIDIA driver gets the default (CUDA) build
# from PyPI; a CPU machine gets the pinned release, which pip takes from a
# local wheel where one exists instead of downloading a multi-GB CUDA build.
# Override with e.g. `make install TORCH_SPEC="torch==2.13.0"`.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.6,torch==2.13.0)
PYTEST := $(BIN)/python -m pytest

.PHONY: help install demo test test-fast lint format clean simulate
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,sweep]"
	touch $@

install: $(STAMP)  ## build the virtual environment (.venv) once

demo: $(STAMP)  ## the main job on the built-in simulator: simulate -> VAE -> diffusion -> sample -> evaluate
	$(BIN)/python -m latent_diffusion.demo

simulate: $(STAMP)  ## write a simulated data set to data/microdoppler_demo with a preview grid
	$(BIN)/python -m latent_diffusion.simulate out_dir=data/microdoppler_demo

test: $(STAMP)  ## the whole suite (what CI runs): two pytest-xdist workers, one thread each
	$(PYTEST) -q -n 2 --dist loadfile

test-fast: $(STAMP)  ## quick subset for the edit loop (skips `slow`)
	$(PYTEST) -q -m "not slow"

lint: $(STAMP)  ## ruff check
	$(BIN)/ruff check latent_diffusion tests

format: $(STAMP)  ## ruff format + import sort
	$(BIN)/ruff check --fix --select I latent_diffusion tests
	$(BIN)/ruff format latent_diffusion tests

clean:  ## remove the venv, caches and outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs .cache wandb
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
